"""Every process command in the entrypoint, the Procfile, compose and the manifests exists in the code."""

from __future__ import annotations

import importlib

import pytest
from django.core.management import get_commands

from apps.eventbus.queues import Queue
from tests.deploy.conftest import entrypoint_roles, k8s_documents, procfile_commands, procfile_roles

ROLES = entrypoint_roles()
PROCESS_ROLES = {
    "web",
    "web-ws",
    "worker-realtime",
    "worker-batch",
    "worker-training",
    "relay",
    "subscribers",
    "archiver",
    "beat",
}


def _option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def check_command(argv: list[str]) -> None:
    """Fail unless ``argv`` runs something that exists: a management command, known queues, an importable app."""
    program = argv[0].rsplit("/", 1)[-1]
    if program == "python" and argv[1] == "manage.py":
        assert argv[2] in get_commands(), f"no management command {argv[2]!r}"
    elif program == "celery":
        assert _option(argv, "-A") == "project"
        importlib.import_module("project.celery")
        if argv[3] == "worker":
            queues = _option(argv, "-Q")
            assert queues, f"a worker must name its queues: {argv}"
            for queue in queues.split(","):
                assert queue in {q.value for q in Queue}, f"queue {queue!r} is not in apps.eventbus.queues.Queue"
            assert _option(argv, "-n"), "every worker node gets a distinct name (-n)"
        elif argv[3] == "flower":
            assert "--enable_events=False" in argv, "Flower would switch task events on in every worker"
        elif argv[3] == "beat":
            module, _, attr = _option(argv, "-S").partition(":")
            assert hasattr(importlib.import_module(module), attr)
        else:
            pytest.fail(f"unknown celery sub-command in {argv}")
    elif program == "uvicorn":
        module, _, attr = argv[1].partition(":")
        assert hasattr(importlib.import_module(module), attr)
        assert "--timeout-graceful-shutdown" in argv, "web must finish in-flight requests on SIGTERM"
    elif program == "gunicorn":
        module, _, attr = argv[1].partition(":")
        assert hasattr(importlib.import_module(module), attr)
        config = importlib.import_module(_option(argv, "--config").removeprefix("python:"))
        assert config.graceful_timeout > 0, "web must finish in-flight requests on SIGTERM"
    elif program == "python" and argv[1] == "-m":
        importlib.import_module(argv[2])
    else:
        pytest.fail(f"unknown program in {argv}")


@pytest.mark.parametrize("role", sorted(PROCESS_ROLES))
def test_entrypoint_role_runs_existing_code(role):
    assert role in ROLES, f"docker/entrypoint.sh has no {role!r} role"
    check_command(ROLES[role])


def test_entrypoint_migrate_role_uses_manage_py():
    assert ROLES["migrate"][:3] == ["python", "manage.py", "migrate"]


@pytest.mark.parametrize("name,argv", sorted(procfile_roles().items()))
def test_procfile_command_exists(name, argv):
    check_command(argv)


def test_procfile_runs_every_process_role_through_the_entrypoint():
    # make up's web process is web-local: HAProxy in front of the web and web-ws roles (project/serve.py).
    roles = {argv[1] for argv in procfile_commands().values()}
    assert roles == (PROCESS_ROLES - {"web", "web-ws"}) | {"web-local", "flower"}
    assert ROLES["web-local"][:3] == ["python", "-m", "project.serve"]


def test_compose_services_use_entrypoint_roles(compose):
    app_services = {name: svc for name, svc in compose["services"].items() if "build" in svc}
    for name, service in app_services.items():
        assert service["command"][0] in ROLES, f"{name}: unknown role {service['command']}"
    used = {svc["command"][0] for svc in app_services.values()}
    assert PROCESS_ROLES | {"migrate"} <= used, f"compose lacks {PROCESS_ROLES - used}"


def test_k8s_containers_use_entrypoint_roles():
    for doc in k8s_documents():
        if doc["kind"] not in {"Deployment", "Job"}:
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert container["args"][0] in ROLES, (doc["__file__"], doc["metadata"]["name"])


def test_every_queue_has_a_worker_pool():
    consumed = set()
    for role in ("worker-realtime", "worker-batch", "worker-training"):
        consumed |= set(_option(ROLES[role], "-Q").split(","))
    assert consumed == {q.value for q in Queue}
