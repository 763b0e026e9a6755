"""The operator console in a real browser: from the admin index, through the charts, to a bulk replay."""

from __future__ import annotations

import pytest
from django.conf import settings
from kombu import Connection

from apps.eventbus.queues import declare_topology
from apps.ops.models import DeadLetterReplay
from tests.apps.ops.test_dead_letters_api import archive
from tests.browser.conftest import OPERATOR_PASSWORD, operator_create

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_an_operator_finds_the_console_reads_the_charts_and_replays_a_group(web, browser):
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
    operator_create("console_op")
    failure = {
        "exception_class": "PermanentError",
        "exception_message": "bad input",
        "traceback": "Traceback (most recent call last):\nPermanentError: bad input\n",
        "attempts": 1,
        "reason": "rejected",
    }
    rows = [archive(task_name="test.browser_console", queue="ai.batch", failure=failure) for _ in range(2)]

    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"http://127.0.0.1:{web.port}/admin/login/?next=/admin/")
    page.fill("#id_username", "console_op")
    page.fill("#id_password", OPERATOR_PASSWORD)
    page.click("input[type=submit]")
    page.click("text=Operator console")
    page.wait_for_selector("h2#queues")
    page.reload()  # a second read: the charts have two samples to draw lines between
    assert page.locator(".chart[data-queue='ai.realtime'] svg").count() == 1
    assert page.locator(".chart polyline").count() > 0
    assert page.locator("tr.advice").count() >= 1

    group = page.locator(f"tr.dead-letter-group[data-fingerprint='{rows[0].fingerprint}']")
    assert "2" in group.inner_text()
    group.locator("button").click()
    page.wait_for_selector("text=Replayed 2")
    assert DeadLetterReplay.objects.filter(dead_letter__in=rows).count() == 2
