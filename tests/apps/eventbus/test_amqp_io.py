"""Failover BROKER_URLs (``;``-separated hosts): parsing, the order hosts are tried, every reader of the setting.

Dead hosts are free local ports (connection refused); the live one is this
run's vhost on the shared broker, only connected to, never stopped.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.conf import settings
from kombu import Connection

from apps.eventbus.amqp_io import BrokerHosts, broker_urls
from tests.support.services import free_port


def _dead(vhost: str = "") -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/{vhost}"


def test_broker_urls_splits_a_failover_url_in_order_and_keeps_a_plain_one():
    url = "amqp://u:p@h1:5672//; amqp://u:p@h2:5672//;amqp://u:p@h3:5672//;"

    assert broker_urls(url) == ["amqp://u:p@h1:5672//", "amqp://u:p@h2:5672//", "amqp://u:p@h3:5672//"]
    assert broker_urls("amqp://guest:guest@127.0.0.1:5672//") == ["amqp://guest:guest@127.0.0.1:5672//"]
    with pytest.raises(ValueError, match="names no broker"):
        broker_urls(" ; ")


def test_test_settings_put_every_host_of_a_failover_url_on_the_runs_vhost():
    from project.settings.test import _with_vhost

    url = "amqp://u:p@h1:5672//;amqp://u:p@h2:5673/other;amqp://u:p@h3:5674"

    assert _with_vhost(url, "ce_test_1") == (
        "amqp://u:p@h1:5672/ce_test_1;amqp://u:p@h2:5673/ce_test_1;amqp://u:p@h3:5674/ce_test_1"
    )


def test_a_fresh_kombu_connection_gives_up_after_two_hosts():
    """Why BrokerHosts exists: ``Connection("a;b;c").connect()`` tries a and b only."""
    live = settings.BROKER_URL
    conn = Connection(";".join([_dead(), _dead(), live]), connect_timeout=2)
    try:
        with pytest.raises(OSError):
            conn.connect()
    finally:
        conn.collect()


def test_broker_hosts_tries_every_host_once_and_reaches_the_live_one():
    live = settings.BROKER_URL
    hosts = BrokerHosts(";".join([_dead(), _dead(), live]))

    with hosts.connect(connect_timeout=2) as conn:
        assert conn.connected

    assert hosts.current == live
    assert hosts.current_host == urlsplit(live).netloc.rpartition("@")[2]


def test_broker_hosts_starts_a_reconnect_at_the_host_after_the_one_it_had():
    live = settings.BROKER_URL
    # The same live broker under two names: which one was reached shows the order.
    first, second = live, live.replace("127.0.0.1", "localhost")
    hosts = BrokerHosts(f"{first};{second}")

    with hosts.connect(connect_timeout=2):
        assert hosts.current == first
    with hosts.connect(connect_timeout=2):
        assert hosts.current == second
    with hosts.connect(connect_timeout=2):
        assert hosts.current == first


def test_broker_hosts_raises_a_connection_error_naming_every_failure_when_none_answers():
    hosts = BrokerHosts(f"{_dead()};{_dead()};{_dead()}")

    with pytest.raises(ConnectionError, match="no broker of 3 answered") as info:
        hosts.connect(connect_timeout=1)

    assert str(info.value).count("Error") >= 3


def test_celery_fails_over_round_robin_through_the_listed_hosts():
    from project.celery import app

    assert app.conf.broker_failover_strategy == "round-robin"
    conn = app.connection_for_write(url=f"{_dead()};{settings.BROKER_URL}")
    try:
        assert len(conn.alt) == 2
        conn.ensure_connection(max_retries=1)
        assert conn.connected
    finally:
        conn.release()


@pytest.mark.django_db
def test_readiness_is_ok_while_one_node_of_a_failover_url_answers(settings):
    from apps.ops import health

    settings.BROKER_URL = f"{_dead()};{_dead()};{settings.BROKER_URL}"
    try:
        health.check_broker(2.0)
    finally:
        health.readiness_reset()


def test_management_api_vhost_and_credentials_come_from_the_first_broker_url(settings, monkeypatch):
    import urllib.request

    from apps.ops.fleet import figures

    seen: list[tuple[str, str]] = []

    class _Answer:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return b'{"name": "ai.batch"}'

    def fake_urlopen(request, timeout):
        seen.append((request.full_url, request.headers["Authorization"]))
        if "node1" in request.full_url:
            raise OSError("node1 is down")
        return _Answer()

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    settings.BROKER_URL = "amqp://ce:secret@h1:5672/ce_vhost;amqp://ce:secret@h2:5672/ce_vhost"
    settings.RABBITMQ_MANAGEMENT_URL = "http://node1:15672;http://node2:15672"

    assert figures.management_queue_info("ai.batch") == {"name": "ai.batch"}
    assert [url for url, _ in seen] == [
        "http://node1:15672/api/queues/ce_vhost/ai.batch",
        "http://node2:15672/api/queues/ce_vhost/ai.batch",
    ]
