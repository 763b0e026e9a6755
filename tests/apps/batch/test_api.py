"""GET /api/v1/ops/jobs/ and /api/v1/ops/stats/: staff only, filters, clear 4xx."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.utils import timezone

from apps.batch.models import DailySessionRollup, DailyUserRollup, JobRun


@pytest.fixture
def staff_client(api_client_for, staff_user):
    return api_client_for(staff_user)


def _run(name: str, status: str = JobRun.Status.SUCCEEDED) -> JobRun:
    now = timezone.now()
    return JobRun.objects.create(
        job_name=name,
        status=status,
        started_at=now,
        progress_done=5,
        progress_total=5,
        finished_at=None if status == JobRun.Status.RUNNING else now,
    )


def test_jobs_list_is_staff_only(db, api_client, staff_client):
    _run("session_expiry")
    denied = api_client.get("/api/v1/ops/jobs/")
    assert denied.status_code == 403 and denied.json()["code"] == "permission_denied"
    body = staff_client.get("/api/v1/ops/jobs/").json()
    assert [r["job_name"] for r in body["results"]] == ["session_expiry"]
    assert {
        "progress_done",
        "progress_total",
        "checkpoint",
        "status",
        "started_at",
        "finished_at",
        "error",
        "worker",
        "parameters",
        "resume_count",
    } <= set(body["results"][0])


def test_jobs_list_filters_and_detail(db, staff_client):
    running = _run("daily_rollup", JobRun.Status.RUNNING)
    _run("session_expiry")
    body = staff_client.get("/api/v1/ops/jobs/", {"status": "running"}).json()
    assert [r["id"] for r in body["results"]] == [str(running.id)]
    assert (
        staff_client.get("/api/v1/ops/jobs/", {"job_name": "session_expiry"}).json()["results"][0]["job_name"]
        == "session_expiry"
    )
    assert staff_client.get(f"/api/v1/ops/jobs/{running.id}/").json()["status"] == "running"


def test_a_job_run_shows_what_its_step_reported_last(db, staff_client):
    running = _run("train_next_action", JobRun.Status.RUNNING)
    JobRun.objects.filter(pk=running.pk).update(progress_detail={"unit": "epoch", "done": 1, "total": 3, "loss": 1.5})
    body = staff_client.get(f"/api/v1/ops/jobs/{running.id}/").json()
    assert body["progress_detail"] == {"unit": "epoch", "done": 1, "total": 3, "loss": 1.5}


@pytest.mark.parametrize(
    "path", ["/api/v1/ops/jobs/not-a-uuid/", "/api/v1/ops/jobs/00000000-0000-0000-0000-000000000000/"]
)
def test_unknown_job_run_is_404(db, staff_client, path):
    response = staff_client.get(path)
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_bad_filter_is_400(db, staff_client):
    response = staff_client.get("/api/v1/ops/jobs/", {"status": "bogus"})
    assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_stats_sum_the_rollups(db, staff_client, session_factory, user, other_user):
    s1, s2 = session_factory(), session_factory(owner=other_user)
    day = date(2026, 1, 10)
    now = timezone.now()
    DailySessionRollup.objects.create(
        day=day, session=s1, events=10, participants=2, suggestions_shown=4, suggestions_accepted=1, computed_at=now
    )
    DailySessionRollup.objects.create(
        day=day + timedelta(days=1),
        session=s1,
        events=3,
        participants=1,
        suggestions_shown=0,
        suggestions_accepted=0,
        computed_at=now,
    )
    DailySessionRollup.objects.create(
        day=day, session=s2, events=5, participants=1, suggestions_shown=4, suggestions_accepted=3, computed_at=now
    )
    DailyUserRollup.objects.create(
        day=day, user=user, events=8, sessions=1, suggestions_shown=4, suggestions_accepted=1, computed_at=now
    )

    body = staff_client.get("/api/v1/ops/stats/", {"start": "2026-01-10", "end": "2026-01-11"}).json()

    assert body["totals"]["events"] == 18 and body["totals"]["suggestions_accepted"] == 4
    assert body["totals"]["acceptance_rate"] == 0.5
    assert body["totals"]["active_sessions"] == 2 and body["totals"]["active_users"] == 1
    assert [d["day"] for d in body["days"]] == ["2026-01-10", "2026-01-11"]
    assert body["days"][0]["events"] == 15
    assert body["top_sessions"][0]["session_id"] == str(s1.id)
    one = staff_client.get(
        "/api/v1/ops/stats/", {"start": "2026-01-10", "end": "2026-01-10", "session_id": str(s2.id)}
    ).json()
    assert one["totals"]["events"] == 5
    mine = staff_client.get(
        "/api/v1/ops/stats/", {"start": "2026-01-10", "end": "2026-01-10", "user": user.username}
    ).json()
    assert mine["totals"]["events"] == 8 and mine["totals"]["sessions"] == 1


@pytest.mark.parametrize(
    "params",
    [
        {"start": "2026-02-01", "end": "2026-01-01"},
        {"start": "yesterday"},
        {"start": "2020-01-01", "end": "2026-01-01"},
        {"user": "nobody-like-this"},
        {"session_id": "nope"},
        {"end": "0001-01-02"},
    ],
)
def test_stats_bad_input_is_400(db, staff_client, params):
    response = staff_client.get("/api/v1/ops/stats/", params)
    assert response.status_code == 400
    assert set(response.json()) == {"code", "message", "details"}


def test_stats_is_staff_only(db, api_client):
    assert api_client.get("/api/v1/ops/stats/").status_code == 403


def test_a_running_run_is_live_only_while_its_process_holds_the_lock(db, staff_client):
    from tests.apps.batch.test_jobs import _close_and_wait_released, _lock_from_another_connection

    running = _run("daily_rollup", JobRun.Status.RUNNING)
    _run("session_expiry")
    body = staff_client.get("/api/v1/ops/jobs/").json()
    assert {r["job_name"]: r["live"] for r in body["results"]} == {"daily_rollup": False, "session_expiry": False}
    other = _lock_from_another_connection("daily_rollup")
    try:
        body = staff_client.get("/api/v1/ops/jobs/").json()
        assert {r["job_name"]: r["live"] for r in body["results"]} == {"daily_rollup": True, "session_expiry": False}
        assert staff_client.get(f"/api/v1/ops/jobs/{running.id}/").json()["live"] is True
    finally:
        _close_and_wait_released(other, "daily_rollup")
