"""The clustered RabbitMQ options, parsed (nothing is started).

docker-compose.rabbitmq-cluster.yml over docker-compose.yml, and docker/k8s/rabbitmq-cluster/.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from apps.eventbus.amqp_io import broker_urls
from tests.deploy.conftest import DOCKER, REPO_ROOT
from tests.deploy.test_compose import SCHEMA

OVERRIDE = REPO_ROOT / "docker-compose.rabbitmq-cluster.yml"
NODES = ["rabbitmq", "rabbitmq2", "rabbitmq3"]


@pytest.fixture(scope="module")
def override() -> dict:
    return yaml.safe_load(OVERRIDE.read_text())


@pytest.fixture(scope="module")
def merged(compose, override) -> dict:
    """The two files as ``docker compose -f a -f b`` merges them: mappings key by key, lists replaced."""

    def merge(base, extra):
        if isinstance(base, dict) and isinstance(extra, dict):
            return {**base, **{k: merge(base[k], v) if k in base else v for k, v in extra.items()}}
        return extra

    return merge(compose, override)


def test_override_and_merged_stack_follow_the_compose_schema(override, merged):
    for name in override["services"]:
        assert name in merged["services"]
    jsonschema.validate(merged, SCHEMA)


def test_three_nodes_share_one_cookie_and_list_each_other_by_classic_config(merged):
    services = merged["services"]
    commands = []
    for node in NODES:
        service = services[node]
        assert service["hostname"] == node
        assert "management" in service["image"]
        assert service["environment"]["CLUSTER_ERLANG_COOKIE"].startswith("${RABBITMQ_ERLANG_COOKIE:?")
        assert service["healthcheck"]["test"]
        assert any(v.endswith(":/var/lib/rabbitmq") for v in service["volumes"]), f"{node}: its own data volume"
        commands.append(service["command"][-1])
    assert len(set(commands)) == 1, "every node runs the same cluster settings"
    script = commands[0]
    assert "cluster_formation.peer_discovery_backend = classic_config" in script
    listed = re.findall(r"cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)", script)
    assert listed == NODES
    assert "/var/lib/rabbitmq/.erlang.cookie" in script and "chmod 600" in script
    volumes = {v.split(":", 1)[0] for n in NODES for v in services[n]["volumes"]}
    assert volumes <= set(merged["volumes"])
    assert len(volumes) == 3


def test_every_app_process_gets_a_failover_url_listing_the_three_nodes(merged):
    for name, service in merged["services"].items():
        if "build" not in service:
            continue
        urls = broker_urls(service["environment"]["BROKER_URL"])
        assert [urlsplit(u).hostname for u in urls] == NODES, name
        assert all(urlsplit(u).port == 5672 for u in urls)
        management = service["environment"]["RABBITMQ_MANAGEMENT_URL"].split(";")
        assert [urlsplit(u).hostname for u in management] == NODES, name


def _k8s_cluster() -> list[dict]:
    path = DOCKER / "k8s" / "rabbitmq-cluster" / "rabbitmq.yaml"
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_k8s_cluster_is_a_three_replica_statefulset_with_k8s_peer_discovery():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _k8s_cluster()}
    for doc in docs.values():
        assert doc.get("apiVersion") and doc["metadata"].get("name")
    sts = docs[("StatefulSet", "rabbitmq")]["spec"]
    assert sts["replicas"] == 3
    headless = docs[("Service", sts["serviceName"])]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    pod = sts["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sts["selector"]["matchLabels"].items() <= sts["template"]["metadata"]["labels"].items()

    config = docs[("ConfigMap", "rabbitmq-cluster")]["data"]
    assert "rabbitmq_peer_discovery_k8s" in config["enabled_plugins"]
    conf = dict(
        line.split(" = ", 1) for line in config["rabbitmq.conf"].splitlines() if " = " in line and line[0] != "#"
    )
    assert conf["cluster_formation.peer_discovery_backend"] == "k8s"
    assert conf["cluster_formation.k8s.service_name"] == sts["serviceName"]
    # The plugin reads the headless Service's endpoints with the pods' service account.
    role = docs[("Role", "rabbitmq-peer-discovery")]
    assert {"resources": ["endpoints"], "verbs": ["get"], "apiGroups": [""]} in role["rules"]
    binding = docs[("RoleBinding", "rabbitmq-peer-discovery")]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]

    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["RABBITMQ_USE_LONGNAME"]["value"] == "true"
    assert f".{sts['serviceName']}." in env["RABBITMQ_NODENAME"]["value"]
    cookie = {e["name"]: e for e in pod["initContainers"][0]["env"]}["ERLANG_COOKIE"]
    assert cookie["valueFrom"]["secretKeyRef"]["key"] == "erlang-cookie"


def test_k8s_cluster_is_opt_in_and_documents_its_failover_url():
    """Not among docker/k8s/*.yaml (applied as a whole); its header gives the BROKER_URL for the three pods."""
    assert not (DOCKER / "k8s" / "rabbitmq.yaml").exists()
    text = (DOCKER / "k8s" / "rabbitmq-cluster" / "rabbitmq.yaml").read_text()
    line = next(line for line in text.splitlines() if "amqp://" in line and ";" in line)
    urls = broker_urls(line.lstrip("# ").strip())
    assert [urlsplit(u).hostname for u in urls] == [f"rabbitmq-{i}.rabbitmq-nodes" for i in range(3)]
