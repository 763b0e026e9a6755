"""Queue figures and scaling advice: the arithmetic (pure) and the real broker (this run's vhost)."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from kombu import Connection

from apps.eventbus.queues import TASKS_EXCHANGE, Queue, declare_topology
from apps.ops.fleet import figures as fleet


def test_more_workers_when_arrival_rate_exceeds_service_rate():
    # 10 tasks/s arrive; each takes 0.5 s, so 2 slots serve only 4/s.
    rec = fleet.queue_recommendation(
        queue="ai.batch",
        arrival_rate=10.0,
        service_time=0.5,
        service_time_source="t",
        latency_target=5.0,
        depth=0,
        current_workers=2,
    )

    assert rec.action == "scale_up"
    # a = 5 busy slots; at most 80 % busy: ceil(5 / 0.8) = 7.
    assert rec.recommended_workers == 7
    assert rec.offered_load == pytest.approx(5.0)
    assert "ceil(a/0.8)=7" in rec.explanation


def test_fewer_workers_when_idle():
    rec = fleet.queue_recommendation(
        queue="ai.batch",
        arrival_rate=0.0,
        service_time=0.5,
        service_time_source="t",
        latency_target=5.0,
        depth=0,
        current_workers=6,
        min_workers=1,
    )

    assert rec.action == "scale_down"
    assert rec.recommended_workers == 1


def test_backlog_must_drain_within_the_target():
    # No new arrivals but 100 waiting tasks of 1 s each must be done within 10 s: 10 slots.
    rec = fleet.queue_recommendation(
        queue="ai.batch",
        arrival_rate=0.0,
        service_time=1.0,
        service_time_source="t",
        latency_target=10.0,
        depth=100,
        current_workers=2,
    )

    assert rec.recommended_workers == 10
    assert rec.action == "scale_up"


def test_latency_target_can_need_more_than_utilisation_alone():
    # a = 0.8: one slot would be 80 % busy, but the M/M/1 wait (S·ρ/(1-ρ) = 0.4 s) + S exceeds T = 0.3 s.
    rec = fleet.queue_recommendation(
        queue="ai.realtime",
        arrival_rate=8.0,
        service_time=0.1,
        service_time_source="t",
        latency_target=0.3,
        depth=0,
        current_workers=1,
    )

    assert rec.recommended_workers >= 2
    assert fleet.erlang_c_wait(servers=1, arrival_rate=8.0, service_time=0.1) == pytest.approx(0.4)
    assert fleet.erlang_c_wait(servers=rec.recommended_workers, arrival_rate=8.0, service_time=0.1) + 0.1 <= 0.3


def test_hold_when_workers_match():
    rec = fleet.queue_recommendation(
        queue="maintenance",
        arrival_rate=1.0,
        service_time=1.0,
        service_time_source="t",
        latency_target=60.0,
        depth=0,
        current_workers=2,
    )

    assert (rec.recommended_workers, rec.action) == (2, "hold")


def test_rates_and_oldest_age_from_samples():
    t0 = 1000.0
    first = fleet.Sample(t=t0, depth=10, consumers=1, started=100, finished=100, busy=50.0)
    now = fleet.Sample(t=t0 + 10, depth=30, consumers=1, started=120, finished=118, busy=59.0)

    stat = fleet.queue_stat_compute(
        name="ai.batch",
        kind="work",
        current=now,
        history=[first],
        counters={"last_start": t0 + 9, "last_wait": 4.0},
        window=60,
    )

    assert stat.rate_out == pytest.approx(2.0)  # 20 started in 10 s
    assert stat.rate_in == pytest.approx(4.0)  # 20 more waiting + 20 delivered in 10 s
    assert stat.service_time_seconds == pytest.approx(0.5)  # 9 busy seconds / 18 finished
    # The last message started 1 s ago after waiting 4 s: the head is at most 5 s old.
    assert (stat.oldest_age_seconds, stat.oldest_age_source) == (pytest.approx(5.0), "last_delivery_bound")


def test_stalled_queue_age_is_a_lower_bound_from_samples():
    history = [fleet.Sample(t=t, depth=5, consumers=0, started=3, finished=3, busy=1.0) for t in (108.0, 104.0, 100.0)]
    now = fleet.Sample(t=110.0, depth=7, consumers=0, started=3, finished=3, busy=1.0)

    stat = fleet.queue_stat_compute(name="ai.batch", kind="work", current=now, history=history, counters={}, window=60)

    assert (stat.oldest_age_seconds, stat.oldest_age_source) == (10.0, "stalled_since")


@pytest.fixture
def topology():
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
        yield conn
        for name in (Queue.AI_BATCH.value,):
            conn.default_channel.queue_purge(name)


def _publish(conn: Connection, queue: Queue, n: int) -> None:
    producer = conn.Producer()
    for i in range(n):
        producer.publish({"n": i}, exchange=TASKS_EXCHANGE, routing_key=queue.value, serializer="json")


@pytest.mark.django_db
def test_queue_stats_read_the_real_broker_and_compute_rates(topology):
    t0 = time.time()
    _publish(topology, Queue.AI_BATCH, 5)
    time.sleep(0.3)

    first = {s.name: s for s in fleet.queue_stats_collect(now=t0)}
    _publish(topology, Queue.AI_BATCH, 5)
    time.sleep(0.3)
    second = {s.name: s for s in fleet.queue_stats_collect(now=t0 + 10)}

    assert first["ai.batch"].depth == 5
    assert first["ai.batch"].rate_in is None
    assert {"ai.batch.dlq", "ai.realtime.dlq", "maintenance.dlq"} <= set(second)
    batch = second["ai.batch"]
    assert batch.depth == 10
    assert batch.consumers == 0
    assert batch.rate_in == pytest.approx(0.5)
    assert batch.rate_out == 0
    assert (batch.oldest_age_seconds, batch.oldest_age_source) == (pytest.approx(10.0), "stalled_since")
    assert second["ai.realtime"].oldest_age_source == "empty"

    report = fleet.fleet_report(stats=list(second.values()), nodes=[])
    assert report["bottleneck"] == "ai.batch"
    batch_rec = next(r for r in report["recommendations"] if r["queue"] == "ai.batch")
    assert batch_rec["action"] == "scale_up"
    assert batch_rec["recommended_workers"] >= 1
    assert "λ=0.5/s" in batch_rec["explanation"]


@pytest.mark.django_db
def test_queues_api_is_staff_only(api_client):
    assert api_client.get("/api/v1/ops/queues/").status_code == 403
    assert api_client.get("/api/v1/ops/report/").status_code == 403


def test_queues_api_needs_authentication(client):
    assert client.get("/api/v1/ops/queues/").status_code in (401, 403)


@pytest.mark.django_db
def test_queues_api_answers_figures_for_staff(api_client_for, staff_user, topology):
    _publish(topology, Queue.AI_BATCH, 3)
    time.sleep(0.3)

    response = api_client_for(staff_user).get("/api/v1/ops/queues/")

    assert response.status_code == 200
    rows = {row["name"]: row for row in response.json()["results"]}
    assert rows["ai.batch"]["depth"] == 3
    assert rows["ai.batch.dlq"]["kind"] == "dead_letter"


@pytest.mark.django_db
def test_report_api_explains_its_arithmetic(api_client_for, staff_user, topology):
    response = api_client_for(staff_user).get("/api/v1/ops/report/?window=30")

    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"bottleneck", "summary", "recommendations", "method", "queues", "workers"}
    assert "Erlang C" in body["method"]
    assert {r["queue"] for r in body["recommendations"]} == {q.value for q in Queue}


@pytest.mark.django_db
@pytest.mark.parametrize("window", ["0", "abc", "99999", "-5"])
def test_report_api_rejects_a_bad_window(api_client_for, staff_user, window):
    response = api_client_for(staff_user).get(f"/api/v1/ops/report/?window={window}")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


@pytest.mark.django_db
def test_queues_api_says_503_when_the_broker_is_down(api_client_for, staff_user, settings):
    from tests.support.services import free_port

    settings.BROKER_URL = f"amqp://guest:guest@127.0.0.1:{free_port()}//"

    response = api_client_for(staff_user).get("/api/v1/ops/queues/")

    assert response.status_code == 503
    assert response.json()["code"] == "broker_unavailable"


@pytest.mark.django_db
def test_admin_fleet_page_shows_the_queues(client, staff_user, topology):
    client.force_login(staff_user)

    response = client.get("/admin/ops/fleet/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "ai.realtime.dlq" in html
    assert "Scaling advice" in html


@pytest.mark.django_db
def test_admin_fleet_page_is_staff_only(client, user):
    client.force_login(user)

    assert client.get("/admin/ops/fleet/").status_code == 302


@pytest.fixture
def management_api(settings):
    """A stand-in for RabbitMQ's management API (the shared broker has the plugin off)."""
    import json as jsonlib
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server API
            seen.append((self.path, self.headers.get("Authorization", "")))
            body = jsonlib.dumps(
                {
                    "name": "ai.batch",
                    "messages_ready": 4,
                    "head_message_timestamp": int(time.time()) - 42,
                    "message_stats": {"publish_details": {"rate": 3.5}, "deliver_get_details": {"rate": 1.25}},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.RABBITMQ_MANAGEMENT_URL = f"http://127.0.0.1:{server.server_port}"
    yield seen
    server.shutdown()


def test_management_api_gives_head_age_and_rates_when_configured(management_api, settings):
    stat = fleet.QueueStat(name="ai.batch", kind="work", depth=4, consumers=0)

    fleet._apply_management(stat, now=time.time())

    assert stat.oldest_age_source == "management_api"
    assert stat.oldest_age_seconds == pytest.approx(42, abs=2)
    assert (stat.rate_in, stat.rate_out) == (3.5, 1.25)
    path, auth = management_api[0]
    vhost = settings.BROKER_URL.rsplit("/", 1)[1]
    assert path == f"/api/queues/{vhost}/ai.batch"
    assert auth.startswith("Basic ")


def test_management_api_down_falls_back_to_own_figures(settings):
    from tests.support.services import free_port

    settings.RABBITMQ_MANAGEMENT_URL = f"http://127.0.0.1:{free_port()}"
    stat = fleet.QueueStat(
        name="ai.batch", kind="work", depth=4, consumers=0, oldest_age_seconds=7.0, oldest_age_source="stalled_since"
    )

    fleet._apply_management(stat, now=time.time())

    assert (stat.oldest_age_seconds, stat.oldest_age_source) == (7.0, "stalled_since")


def _stat(
    name: str, *, depth: int = 0, rate_in: float | None = 0.0, service: float | None = 0.1, kind: str = "work"
) -> fleet.QueueStat:
    return fleet.QueueStat(
        name=name,
        kind=kind,
        depth=depth,
        consumers=1,
        rate_in=rate_in,
        rate_out=0.0,
        service_time_seconds=service,
        service_time_source="window" if service else None,
    )


def test_report_names_no_bottleneck_when_everything_keeps_up():
    stats = [_stat(q.value) for q in Queue]
    nodes = [fleet.WorkerNode(name=f"{q.value}@h", queues=[q.value], concurrency=1) for q in Queue]

    report = fleet.fleet_report(stats=stats, nodes=nodes)

    assert report["bottleneck"] is None
    assert report["summary"].startswith("No bottleneck")
    assert {r["action"] for r in report["recommendations"]} == {"hold"}


def test_report_names_the_overloaded_queue_and_counts_pool_slots():
    stats = [
        _stat("ai.realtime", rate_in=50.0, service=0.1),
        _stat("ai.batch"),
        _stat("maintenance"),
        _stat("ai.training"),
        _stat("ai.batch.dlq", depth=3, kind="dead_letter"),
    ]
    nodes = [
        fleet.WorkerNode(name="realtime@h", queues=["ai.realtime"], concurrency=2),
        fleet.WorkerNode(name="batch@h", queues=["ai.batch", "maintenance"], concurrency=2),
    ]

    report = fleet.fleet_report(stats=stats, nodes=nodes)

    assert report["bottleneck"] == "ai.realtime"
    realtime = next(r for r in report["recommendations"] if r["queue"] == "ai.realtime")
    # 50/s x 0.1 s = 5 busy slots on 2: ceil(5/0.8) = 7 at least.
    assert realtime["current_workers"] == 2 and realtime["recommended_workers"] >= 7
    batch = next(r for r in report["recommendations"] if r["queue"] == "ai.batch")
    assert "also serve maintenance" in batch["explanation"]
    assert "ai.batch.dlq=3" in report["summary"]
