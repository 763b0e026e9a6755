"""docker-compose.yml: parses, follows the compose schema's essentials, and wires the platform as documented."""

from __future__ import annotations

import re

import jsonschema
import pytest

from tests.deploy.conftest import REPO_ROOT

# The essentials of the compose specification (https://github.com/compose-spec/compose-spec) for the
# keys this file uses; unknown keys are refused so a typo does not pass silently.
_DURATION = {"type": "string", "pattern": r"^(\d+(\.\d+)?(h|m|s|ms|us))+$"}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_PORT = r"^((\d{1,3}\.){3}\d{1,3}:)?((\d+|\$\{[A-Z_]+:-\d+\}):)?\d+$"
_ENV = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}}
SERVICE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string"},
        "build": {
            "type": "object",
            "properties": {
                "context": {"type": "string"},
                "dockerfile": {"type": "string"},
                "target": {"type": "string"},
                "args": _ENV,
            },
            "required": ["context"],
            "additionalProperties": False,
        },
        "command": {"oneOf": [{"type": "string"}, _STRINGS]},
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "environment": _ENV,
        "hostname": {"type": "string"},
        # [host IP:][host port:]container port; the host port may be ${VAR:-default}
        "ports": {"type": "array", "items": {"type": "string", "pattern": _PORT}},
        "volumes": {"type": "array", "items": {"type": "string", "pattern": r"^[^:]+:[^:]+(:(ro|rw))?$"}},
        "depends_on": {
            "oneOf": [
                _STRINGS,
                {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "condition": {
                                "enum": ["service_started", "service_healthy", "service_completed_successfully"]
                            }
                        },
                        "required": ["condition"],
                        "additionalProperties": False,
                    },
                },
            ]
        },
        "healthcheck": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "test": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
                "interval": _DURATION,
                "timeout": _DURATION,
                "start_period": _DURATION,
                "retries": {"type": "integer"},
                "disable": {"type": "boolean"},
            },
        },
        "stop_grace_period": _DURATION,
        "stop_signal": {"type": "string", "pattern": "^SIG[A-Z0-9]+$"},
    },
    "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
}
SCHEMA = {
    "type": "object",
    "required": ["services"],
    "patternProperties": {"^x-": {}},
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "services": {"type": "object", "additionalProperties": SERVICE_SCHEMA},
        "volumes": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
    },
    "additionalProperties": False,
}


def test_compose_follows_the_schema(compose):
    jsonschema.validate(compose, SCHEMA)


def test_dependencies_exist_and_health_conditions_have_healthchecks(compose):
    services = compose["services"]
    for name, service in services.items():
        deps = service.get("depends_on", {})
        items = deps.items() if isinstance(deps, dict) else ((d, {"condition": "service_started"}) for d in deps)
        for dep, spec in items:
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                check = services[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{dep} needs a healthcheck"


def test_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
            else:
                assert (REPO_ROOT / source).exists(), f"{name}: {source} does not exist"


def test_has_the_platform_services(compose):
    services = compose["services"]
    assert {
        "postgres",
        "redis",
        "rabbitmq",
        "haproxy",
        "web1",
        "web2",
        "worker-realtime",
        "worker-batch",
        "worker-training",
        "relay",
        "subscribers",
        "archiver",
        "beat",
    } <= set(services)
    assert "management" in services["rabbitmq"]["image"], "RabbitMQ with the management plugin"


def test_two_web_instances_behind_haproxy(compose):
    services = compose["services"]
    haproxy = services["haproxy"]
    assert any(v.startswith("./docker/haproxy.cfg:") for v in haproxy["volumes"])
    backends = {haproxy["environment"]["WEB1_ADDR"].split(":")[0], haproxy["environment"]["WEB2_ADDR"].split(":")[0]}
    assert backends == {"web1", "web2"}
    assert {services[w]["environment"]["INSTANCE_NAME"] for w in backends} == {"web1", "web2"}
    for web in backends:
        assert services[web]["command"] == ["web"]
        assert services[web]["environment"]["ALLOWED_HOSTS"].split(",")[0] == "localhost", (
            "HAProxy's health check sends Host: localhost"
        )


def test_app_services_get_the_services_urls(compose):
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        env = service["environment"]
        for key in ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "SECRET_KEY", "ALLOWED_HOSTS"):
            assert env.get(key), f"{name} lacks {key}"
        assert env["DJANGO_SETTINGS_MODULE"] == "project.settings.prod"
        assert len(env["SECRET_KEY"].split(":-", 1)[-1].rstrip("}")) >= 50, "prod settings refuse short keys"


def test_graceful_stop_periods_cover_the_shutdown(compose):
    def seconds(value: str) -> float:
        return sum(
            float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u]
            for n, u in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", value)
        )

    services = compose["services"]
    for web in ("web1", "web2"):
        assert seconds(services[web]["stop_grace_period"]) > 20, "longer than uvicorn's graceful timeout"
    assert seconds(services["worker-training"]["stop_grace_period"]) >= 300


@pytest.mark.parametrize("service", ["postgres", "redis", "rabbitmq"])
def test_backing_services_have_healthchecks(compose, service):
    assert compose["services"][service]["healthcheck"]["test"]


def test_host_ports_are_configurable_and_miss_the_standard_service_ports(compose):
    taken = {"5432", "6379", "5672"}  # a machine that already runs PostgreSQL, Redis and RabbitMQ
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            match = re.fullmatch(r"(?:(?P<ip>[\d.]+):)?\$\{(?P<var>[A-Z_]+):-(?P<default>\d+)\}:\d+", port)
            assert match, f"{name}: host port {port} is not a ${{VAR:-default}}"
            assert match["default"] not in taken, f"{name}: {port}"
            if name in {"postgres", "redis", "rabbitmq"}:
                assert match["ip"] == "127.0.0.1", f"{name}: {port} published beyond loopback"


def test_workers_run_the_torch_image_and_the_rest_the_web_image(compose):
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        expected = "worker" if name.startswith("worker-") else "web"
        assert service["build"]["target"] == expected, name
        assert service["build"]["dockerfile"] == "docker/Dockerfile", name
