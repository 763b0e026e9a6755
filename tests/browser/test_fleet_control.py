"""The fleet control page in a real browser: from the fleet page to a pause, a refused purge and a resume."""

from __future__ import annotations

import pytest
from django.conf import settings
from kombu import Connection

from apps.eventbus.queues import declare_topology
from apps.ops.models import FleetAction, PausedQueue
from tests.browser.conftest import OPERATOR_PASSWORD, operator_create

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_an_operator_pauses_refuses_a_purge_and_resumes_from_the_fleet_page(web, browser, artifacts):
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
    operator_create("fleet_op")

    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"http://127.0.0.1:{web.port}/admin/login/?next=/admin/ops/fleet/")
    page.fill("#id_username", "fleet_op")
    page.fill("#id_password", OPERATOR_PASSWORD)
    page.click("input[type=submit]")
    page.click("#fleet-tasks-link")
    page.wait_for_selector("table#fleet-tasks")

    row = page.locator("#fleet-queues tr[data-queue='ai.training']")
    row.locator("input[name=reason]").fill("model under review")
    row.locator("button[value=pause]").click()
    page.wait_for_selector("text=Paused ai.training")
    assert "paused" in page.locator("#fleet-queues tr[data-queue='ai.training']").inner_text()

    purge = page.locator("#fleet-queues tr[data-queue='ai.batch']")
    purge.locator("input[name=confirm]").fill("ai.realtime")
    purge.locator("button[value=purge]").click()
    page.wait_for_selector("text=repeat the queue name")
    page.screenshot(path=str(artifacts / "fleet-control.png"), full_page=True)

    page.locator("#fleet-queues tr[data-queue='ai.training'] button[value=resume]").click()
    page.wait_for_selector("text=Resumed ai.training")
    page.close()

    assert not PausedQueue.objects.exists()
    assert list(FleetAction.objects.order_by("created_at").values_list("action", "target")) == [
        ("pause", "ai.training"),
        ("resume", "ai.training"),
    ]
