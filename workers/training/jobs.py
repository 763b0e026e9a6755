"""The ``train_next_action`` job (queue ``ai.training``); the work is in ``workers.training.train``.

Progress: the run's ``progress_detail`` says which epoch of how many has
finished, its loss and the training time so far, written after every epoch
through ``apps.batch.services.job_run_report`` (its own connection: the step's
transaction commits only at the end, with the registered version). The
version's ``metrics["loss_per_epoch"]`` keeps the whole curve.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from apps.batch.jobs import Job, Param, Step, register
from apps.batch.models import JobRun
from apps.common.exceptions import ValidationFailed
from apps.eventbus.queues import Queue
from workers.training.train import TrainingConfig

_DEFAULTS = TrainingConfig()


@register
class TrainNextActionJob(Job):
    name = "train_next_action"
    queue = Queue.AI_TRAINING.value
    description = "Train the next-action model, evaluate it, register a ModelVersion, promote it only if better."
    params = {
        f.name: Param(
            f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}[f.type],
            getattr(_DEFAULTS, f.name),
        )
        for f in fields(TrainingConfig)
        if f.name != "device"
    } | {"device": Param(str, None, "cpu, cuda or auto (default: settings.AI_DEVICE)")}

    def clean_params(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        cleaned = super().clean_params(raw)
        for key in ("max_sessions", "k", "hidden_dim", "embed_dim", "batch_size", "min_eval_pairs"):
            if cleaned[key] < 1:
                raise ValidationFailed(f"{key} must be at least 1.", details={key: [cleaned[key]]})
        if not 0 < cleaned["eval_percent"] < 100:
            raise ValidationFailed("eval_percent must be between 1 and 99.")
        if cleaned["epochs"] < 0 or cleaned["feedback_weight"] < 0 or cleaned["lr"] <= 0:
            raise ValidationFailed("epochs and feedback_weight must be >= 0, lr > 0.")
        return cleaned

    def step(self, *, params: dict[str, Any], checkpoint: dict[str, Any], run: JobRun) -> Step:
        from django.conf import settings

        from workers.inference.runtime import resolve_device

        values = {k: v for k, v in params.items() if k in TrainingConfig.__dataclass_fields__}
        values["device"] = resolve_device(params["device"] or settings.AI_DEVICE)
        from apps.batch import services
        from workers.inference.next_action import EpochReport
        from workers.training.train import train_next_action

        config = TrainingConfig(**values)
        live = {"unit": "epoch", "done": 0, "total": config.epochs}
        services.job_run_report(run=run, detail={**live, "phase": "loading"})

        def report_epoch(report: EpochReport) -> None:
            # Outside this step's transaction: operators see each epoch as it ends.
            detail = {**live, "phase": "training", "done": report.epoch, **report.as_dict()}
            services.job_run_report(run=run, detail=detail)

        outcome = train_next_action(config=config, on_epoch=report_epoch)
        return Step(done=outcome["metrics"]["events"], checkpoint={"phase": "done"}, finished=True, result=outcome)
