"""Training reports its progress per epoch while it runs, to other connections, and keeps the loss curve."""

from __future__ import annotations

import threading
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client

from apps.ai.models import ModelVersion
from apps.batch import services
from apps.batch.jobs import job_execute
from apps.batch.models import JobRun
from apps.batch.synthetic import SyntheticConfig, training_data_generate

EPOCHS = 3
TRAIN = {"epochs": EPOCHS, "batch_size": 64, "eval_percent": 25, "seed": 0, "min_eval_pairs": 1, "device": "cpu"}


def _look_from_another_connection(run_id: Any, admin_id: int) -> dict[str, Any]:
    """Read the run, the versions and the admin's job run list in a thread: Django gives it its own connection."""
    seen: dict[str, Any] = {}

    def read() -> None:
        try:
            seen["run"] = JobRun.objects.values("status", "progress_detail").get(pk=run_id)
            seen["versions"] = ModelVersion.objects.count()
            client = Client()
            client.force_login(get_user_model().objects.get(pk=admin_id))
            seen["admin"] = client.get("/admin/batch/jobrun/").content.decode()
        except Exception as exc:  # noqa: BLE001 - re-raised in the test's thread
            seen["error"] = exc
        finally:
            connections.close_all()

    reader = threading.Thread(target=read, name="progress-reader")
    reader.start()
    reader.join(timeout=60)  # a bound on a hang only: the read itself never waits for the training
    assert not reader.is_alive(), "the reader did not finish"
    if "error" in seen:
        raise seen["error"]
    return seen


def test_each_epoch_is_visible_to_others_while_training_runs_and_the_loss_curve_is_kept(transactional_db, monkeypatch):
    # Given training data and an admin watching from another connection
    training_data_generate(config=SyntheticConfig(sessions=12, min_actions=8, max_actions=10, seed=1), users=3)
    admin = get_user_model().objects.create_superuser("watcher", "watcher@example.com", "pw")
    # Training pauses right after epoch 1's report (still inside the job step's
    # open transaction) until the other connection has looked.
    report = services.job_run_report
    during: list[dict[str, Any]] = []

    def report_then_look(*, run: JobRun, detail: dict[str, Any]) -> bool:
        written = report(run=run, detail=detail)
        if detail.get("done") == 1 and not during:
            during.append(_look_from_another_connection(run.pk, admin.pk))
        return written

    monkeypatch.setattr(services, "job_run_report", report_then_look)

    # When the training job runs
    run = job_execute(name="train_next_action", params=TRAIN)

    # Then, while it was at epoch 1 of 3, the other connection saw that epoch's loss
    assert len(during) == 1
    live = during[0]["run"]
    assert live["status"] == JobRun.Status.RUNNING
    detail = live["progress_detail"]
    assert (detail["unit"], detail["done"], detail["total"], detail["phase"]) == ("epoch", 1, EPOCHS, "training")
    assert detail["loss"] > 0 and detail["elapsed_s"] >= 0
    # and the admin's list of runs showed it
    assert f"epoch 1/{EPOCHS}, loss {detail['loss']:.4f}" in during[0]["admin"]
    # but no version yet: that is saved with the step's transaction, at the end
    assert during[0]["versions"] == 0

    # And the version's metrics keep one loss per epoch, the last as train_loss
    version = ModelVersion.objects.get(name="next_action")
    curve = version.metrics["loss_per_epoch"]
    assert [e["epoch"] for e in curve] == [1, 2, 3]
    assert curve[0]["loss"] == detail["loss"]
    assert curve[-1]["loss"] < curve[0]["loss"], curve
    assert version.metrics["train_loss"] == curve[-1]["loss"]
    assert all(e["elapsed_s"] >= 0 for e in curve)
    assert run.result["metrics"]["loss_per_epoch"] == curve

    # And the finished run's progress says the last epoch
    run.refresh_from_db()
    assert run.status == JobRun.Status.SUCCEEDED
    assert (run.progress_detail["done"], run.progress_detail["loss"]) == (EPOCHS, curve[-1]["loss"])


def test_a_report_inside_an_uncommitted_run_is_skipped_not_waited_for(db):
    # Given a run whose row exists only in this test's open transaction
    from django.utils import timezone

    run = JobRun.objects.create(job_name="test_uncommitted", started_at=timezone.now())

    # When progress is reported through the side connection, it cannot see the row: no wait, no error
    assert services.job_run_report(run=run, detail={"unit": "epoch", "done": 1, "total": 2}) is False
    assert run.progress_detail == {"unit": "epoch", "done": 1, "total": 2}


def test_train_model_reports_every_epoch_and_the_report_does_not_change_the_weights():
    import torch

    from workers.inference.next_action import EpochReport, Vocab, train_model

    # Given a small data set with rejections, and one seed
    sequences = [["open_doc", "edit", "save", "share"], ["open_doc", "edit", "save", "print"]] * 10
    vocab = Vocab(["edit", "open_doc", "print", "save", "share"])
    negatives = [(["open_doc", "edit", "save"], "print")] * 3
    options = {"epochs": 4, "lr": 0.01, "batch_size": 8, "seed": 5, "device": "cpu", "embed_dim": 16, "hidden_dim": 16}
    reports: list[EpochReport] = []

    # When the model is trained without a callback, then again with one
    reference, _ = train_model(sequences, vocab=vocab, negatives=negatives, negative_weight=2.0, **options)
    model, _ = train_model(
        sequences, vocab=vocab, negatives=negatives, negative_weight=2.0, on_epoch=reports.append, **options
    )

    # Then the callback was called once per epoch, in order, with the total
    assert [(r.epoch, r.epochs) for r in reports] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # with a loss that falls from epoch to epoch, and the rejections' loss
    losses = [r.loss for r in reports]
    assert all(loss > 0 for loss in losses) and losses == sorted(losses, reverse=True), losses
    assert len(set(losses)) == len(losses), losses
    assert all(r.negative_loss is not None and r.negative_loss > 0 for r in reports)
    elapsed = [r.elapsed_s for r in reports]
    assert elapsed[0] >= 0 and elapsed == sorted(elapsed)
    assert set(reports[0].as_dict()) == {"epoch", "loss", "negative_loss", "elapsed_s"}
    # And the weights are exactly those trained without it
    state, reference_state = model.state_dict(), reference.state_dict()
    assert state.keys() == reference_state.keys()
    for name, weights in reference_state.items():
        assert torch.equal(weights, state[name]), name


def test_train_model_calls_no_callback_without_training_pairs():
    from workers.inference.next_action import Vocab, train_model

    reports: list[object] = []
    train_model([["open_doc"]], vocab=Vocab(["open_doc"]), epochs=3, on_epoch=reports.append)

    assert reports == []
