"""``run_job`` and ``generate_training_data`` management commands."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.batch.models import JobRun
from apps.context.models import ContextEvent, Session
from tests.apps.batch.test_jobs import CountingJob  # noqa: F401 - registers test_counting


def test_run_job_runs_with_params_and_prints_the_run(db):
    out = StringIO()
    call_command("run_job", "test_counting", "--param", "upto=5", "-p", "chunk=2", "--no-progress", stdout=out)
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    run = JobRun.objects.get()
    assert summary["id"] == str(run.id) and summary["status"] == "succeeded"
    assert (summary["done"], summary["total"], summary["result"]) == (5, 5, {"sum": 10})
    assert run.trigger == "manual"


def test_run_job_progress_bar_goes_to_stderr(db):
    out, err = StringIO(), StringIO()
    call_command("run_job", "test_counting", "--param", "upto=4", stdout=out, stderr=err)
    assert json.loads(out.getvalue().strip().splitlines()[-1])["done"] == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["test_counting", "--param", "upto"], "KEY=VALUE"),
        (["test_counting", "--param", "upto=x"], "must be int"),
        (["no_such_job"], "No job named"),
        ([], "Name a job"),
    ],
)
def test_run_job_bad_input_is_a_clear_error(db, argv, message):
    with pytest.raises(CommandError, match=message):
        call_command("run_job", *argv, "--no-progress", stdout=StringIO())
    assert not JobRun.objects.exists()


def test_run_job_lists_the_jobs(db):
    out = StringIO()
    call_command("run_job", "--list", stdout=out)
    text = out.getvalue()
    for name in ("session_expiry", "retention_purge", "daily_rollup", "embedding_backfill", "train_next_action"):
        assert name in text


def test_generate_training_data_writes_sessions_of_actions(db):
    out = StringIO()
    call_command(
        "generate_training_data",
        "--sessions",
        "3",
        "--min-actions",
        "5",
        "--max-actions",
        "6",
        "--text-every",
        "5",
        stdout=out,
    )
    counts = json.loads(out.getvalue())
    assert counts["sessions"] == 3 == Session.objects.count()
    assert ContextEvent.objects.count() == counts["events"]
    assert ContextEvent.objects.filter(event_type="context_update").count() == 3


def test_generate_training_data_rejects_nonsense(db):
    with pytest.raises(CommandError):
        call_command("generate_training_data", "--sessions", "0", stdout=StringIO())
