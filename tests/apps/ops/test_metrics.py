"""/metrics exposition and the request middleware (in-process; task and dead-letter figures: tests/integration/ops)."""

from __future__ import annotations

import re

import pytest

from apps.common.logging import get_correlation_id


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.django_db
def test_metrics_exposes_the_platform_families(client):
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    for family in (
        "ce_http_request_duration_seconds",
        "ce_websocket_connections",
        "ce_websocket_messages_total",
        "ce_task_duration_seconds",
        "ce_tasks_total",
        "ce_inference_batch_size",
        "ce_inference_batch_latency_seconds",
        "ce_queue_stats_up",
        "ce_outbox_pending",
        "ce_outbox_lag_seconds",
        "ce_cache_level_hits",
        "ce_dead_letters",
    ):
        assert f"# HELP {family}" in text, family


@pytest.mark.django_db
def test_request_latency_histogram_moves_by_route_pattern(client):
    before = _sample(
        client.get("/metrics").content.decode(),
        "ce_http_request_duration_seconds_count",
        route="healthz",
        method="GET",
        status="200",
    )

    for _ in range(3):
        client.get("/healthz")

    text = client.get("/metrics").content.decode()
    after = _sample(text, "ce_http_request_duration_seconds_count", route="healthz", method="GET", status="200")
    assert after == before + 3


@pytest.mark.django_db
def test_unmatched_paths_share_one_label(client):
    client.get("/no/such/path/12345")
    client.get("/no/such/path/67890")

    text = client.get("/metrics").content.decode()
    assert _sample(text, "ce_http_request_duration_seconds_count", route="unmatched", status="404") >= 2
    assert "12345" not in text


def test_correlation_id_is_echoed_when_given(client):
    response = client.get("/healthz", HTTP_X_CORRELATION_ID="req-abc.123")

    assert response["X-Correlation-ID"] == "req-abc.123"


def test_correlation_id_is_generated_when_missing_or_unsafe(client):
    generated = client.get("/healthz")["X-Correlation-ID"]
    replaced = client.get("/healthz", HTTP_X_CORRELATION_ID="bad id\nwith newline")["X-Correlation-ID"]

    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert get_correlation_id() is None  # reset after the request


def test_log_lines_of_a_request_carry_its_correlation_id(rf):
    import json
    import logging

    from django.http import HttpResponse

    from apps.common.logging import CorrelationIdFilter, JsonFormatter
    from apps.ops.middleware import ObservabilityMiddleware

    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = Grab(level=logging.DEBUG)
    handler.addFilter(CorrelationIdFilter())
    logger = logging.getLogger("tests.ops.view")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def view(request):
        logger.info("inside the view")
        return HttpResponse("ok")

    try:
        response = ObservabilityMiddleware(view)(rf.get("/x", HTTP_X_CORRELATION_ID="trace-42"))
    finally:
        logger.removeHandler(handler)

    assert response["X-Correlation-ID"] == "trace-42"
    assert json.loads(lines[0])["correlation_id"] == "trace-42"


def test_metrics_token_is_enforced_when_configured(client, settings):
    settings.METRICS_TOKEN = "s3cret"

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401


@pytest.mark.django_db
def test_metrics_with_token(client, settings):
    settings.METRICS_TOKEN = "s3cret"

    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


@pytest.mark.django_db
def test_outbox_lag_moves_when_events_wait_for_the_relay(client, session_factory):
    before = _sample(client.get("/metrics").content.decode(), "ce_outbox_pending")

    session_factory()  # writes session.created (and more) to the outbox; no relay runs here

    after = _sample(client.get("/metrics").content.decode(), "ce_outbox_pending")
    assert after > before


def test_micro_batcher_batches_show_in_the_inference_metrics():
    from apps.ops.metrics import metrics_render
    from workers.inference.batcher import MicroBatcher

    def count() -> float:
        return _sample(metrics_render(include_scrape=False).decode(), "ce_inference_batch_size_count")

    before = count()
    batcher = MicroBatcher(lambda items: [len(i) for i in items], max_batch=8, max_delay_ms=20)
    try:
        futures = [batcher.submit(f"text {i}") for i in range(8)]
        assert [f.result(timeout=5) for f in futures] == [6] * 8
    finally:
        batcher.close()

    assert count() >= before + 1
    text = metrics_render(include_scrape=False).decode()
    assert _sample(text, "ce_inference_batch_latency_seconds_count") >= 1
    assert _sample(text, "ce_inference_queue_wait_seconds_count") >= 8
