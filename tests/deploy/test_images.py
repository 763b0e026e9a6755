"""The image, its entrypoint and health check, HAProxy's config, the Kubernetes manifests and KEDA scalers."""

from __future__ import annotations

import os
import subprocess

import pytest

from apps.eventbus.queues import Queue
from tests.deploy.conftest import DOCKER, REPO_ROOT, entrypoint_roles, k8s_documents


def _option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _stages(text: str) -> dict[str, str]:
    """Stage name -> the image or stage it starts from."""
    stages = {}
    for line in text.splitlines():
        if line.startswith("FROM "):
            parts = line.split()
            stages[parts[3] if len(parts) > 3 else parts[1]] = parts[1]
    return stages


def _stage_text(text: str, name: str) -> str:
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("FROM "):
            inside = line.split()[-1] == name
        if inside:
            lines.append(line)
    return "\n".join(lines)


def test_dockerfile_is_slim_non_root_with_healthcheck():
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text, "the base image is a build argument, slim by default"
    stages = _stages(text)
    assert {"web", "worker"} <= stages.keys()
    # every stage starts from the base image argument or from another stage of this file
    assert all(image == "${BASE_IMAGE}" or image in stages for image in stages.values())
    for target in ("web", "worker"):
        stage = _stage_text(text, target)
        user_lines = [line for line in stage.splitlines() if line.startswith("USER ")]
        assert user_lines and user_lines[-1].split()[1].split(":")[0] not in {"root", "0"}, target
        assert "HEALTHCHECK" in stage and "docker/healthcheck.py" in stage, target
        assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in stage, target
    assert "download.pytorch.org/whl/cpu" in text, "CPU torch wheel, not the CUDA one"


def test_web_image_has_no_torch_and_every_install_is_hash_locked():
    text = (DOCKER / "Dockerfile").read_text()
    web, worker = _stage_text(text, "web"), _stage_text(text, "worker")
    assert "COPY --from=deps-base /opt/venv" in web and "ai.lock" not in web
    assert "COPY --from=deps-ai /opt/venv" in worker
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("--require-hashes" in line for line in installs)
    assert "requirements/base.lock" in _stage_text(text, "deps-base")
    assert "requirements/ai.lock" in _stage_text(text, "deps-ai")
    # torch alone from its index: the other packages' install names no torch index
    assert all("TORCH" not in line for line in installs if "ai.lock" in line or "base.lock" in line)


def test_ca_bundle_is_a_build_secret_not_a_layer():
    text = (DOCKER / "Dockerfile").read_text()
    assert "--mount=type=secret,id=ca_bundle" in text
    assert "ca-certificates.crt" not in "\n".join(
        line for line in text.splitlines() if line.startswith(("COPY", "ADD"))
    )


def test_lock_files_pin_every_package_with_hashes():
    requirements = REPO_ROOT / "requirements"
    for name in ("base", "ai", "dev"):
        lock = (requirements / f"{name}.lock").read_text()
        entries = [line for line in lock.splitlines() if line and not line.startswith((" ", "#"))]
        assert entries, name
        assert all("==" in entry and entry.endswith("\\") for entry in entries), name
    base = (requirements / "base.lock").read_text()
    assert "\ntorch==" not in base and "\ntransformers==" not in base
    assert base.startswith("amqp==") or "\namqp==" in base, "amqp (patched by apps/eventbus/amqp_io.py) is pinned"
    assert "\ntorch==2.13.0+cpu" in (requirements / "ai.lock").read_text()


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env"} <= ignored


def test_entrypoint_is_valid_sh():
    subprocess.run(["sh", "-n", str(DOCKER / "entrypoint.sh")], check=True)
    assert os.access(DOCKER / "entrypoint.sh", os.X_OK)


def test_healthcheck_compiles():
    compile((DOCKER / "healthcheck.py").read_text(), "healthcheck.py", "exec")


def test_haproxy_config_is_valid_for_haproxy(tmp_path):
    env = {
        **os.environ,
        "HAPROXY_BIND": "127.0.0.1:18080",
        "HAPROXY_STATS_BIND": "127.0.0.1:18404",
        "HAPROXY_SOCKET": str(tmp_path / "admin.sock"),
        "WEB1_ADDR": "127.0.0.1:18001",
        "WEB2_ADDR": "127.0.0.1:18002",
        "WS1_ADDR": "127.0.0.1:18003",
        "WS2_ADDR": "127.0.0.1:18004",
    }
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(DOCKER / "haproxy.cfg")], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_checks_readiness_and_tunnels_websockets():
    text = (DOCKER / "haproxy.cfg").read_text()
    assert "uri /readyz" in text
    assert "timeout tunnel" in text
    assert "option redispatch" in text
    assert "hard-stop-after" in text


DOCS = k8s_documents()
DEPLOYMENTS = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "Deployment"}
SCALED = [d for d in DOCS if d["kind"] == "ScaledObject"]


def test_manifests_parse_and_have_kinds():
    assert DOCS
    for doc in DOCS:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc["__file__"]


def test_deployment_selectors_match_their_pod_labels():
    for name, doc in DEPLOYMENTS.items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_pods_run_as_non_root():
    for name, doc in DEPLOYMENTS.items():
        assert doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, name


def test_web_has_readiness_and_liveness_probes():
    web = DEPLOYMENTS["context-engine-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("role", ["worker-realtime", "worker-batch", "worker-training"])
def test_each_worker_pool_scales_on_its_queues_with_keda(role):
    deployment = f"context-engine-{role}"
    assert deployment in DEPLOYMENTS
    scalers = [s for s in SCALED if s["spec"]["scaleTargetRef"]["name"] == deployment]
    assert len(scalers) == 1, f"one ScaledObject for {deployment}"
    triggers = scalers[0]["spec"]["triggers"]
    queues = {t["metadata"]["queueName"] for t in triggers}
    assert queues == set(_option(entrypoint_roles()[role], "-Q").split(","))
    assert queues <= {q.value for q in Queue}
    for trigger in triggers:
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert int(trigger["metadata"]["value"]) >= 1
        assert trigger["authenticationRef"]["name"] in {
            d["metadata"]["name"] for d in DOCS if d["kind"] == "TriggerAuthentication"
        }


def test_scalers_target_existing_deployments():
    for scaled in SCALED:
        assert scaled["spec"]["scaleTargetRef"]["name"] in DEPLOYMENTS


def test_beat_is_a_singleton():
    beat = DEPLOYMENTS["context-engine-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"


def test_env_comes_from_the_shared_config():
    names = {(d["kind"], d["metadata"]["name"]) for d in DOCS}
    assert ("ConfigMap", "context-engine") in names and ("Secret", "context-engine") in names
