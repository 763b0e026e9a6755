"""Batch and maintenance jobs: session expiry, retention, daily rollups, embedding backfill.

Each job's ``step`` does one chunk inside the framework's transaction (see
``apps.batch.jobs``) and returns the checkpoint to resume from. Business rules
live in the services they call; a step only pages through the work. Dead
letters and canary runs belong to the operations layer above: retention purges
them through the callbacks it installs in ``apps.batch.hooks``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.ai import services as ai_services
from apps.batch import selectors as batch_selectors
from apps.batch import services as batch_services
from apps.batch.hooks import hooks as batch_hooks
from apps.batch.jobs import Job, Param, Step, register
from apps.batch.models import JobRun
from apps.common.exceptions import ValidationFailed
from apps.context import selectors as context_selectors
from apps.context import services as context_services
from apps.context.idempotency import idempotency_key_purge
from apps.eventbus import services as eventbus_services
from apps.eventbus.queues import Queue


def _at_least_one(key: str, value: int) -> int:
    if value < 1:
        raise ValidationFailed(f"{key} must be at least 1.")
    return value


def _or_default(params: dict[str, Any], key: str, default: int) -> int:
    """``params[key]``, or the setting ``default`` when the run left it unset; at least 1 either way."""
    return _at_least_one(key, params[key] if params[key] is not None else default)


@register
class SessionExpiryJob(Job):
    name = "session_expiry"
    queue = Queue.MAINTENANCE.value
    description = "Close open sessions idle longer than idle_minutes, emitting session.closed."
    params = {
        "idle_minutes": Param(int, None, "default: settings.SESSION_IDLE_TIMEOUT_MINUTES"),
        "chunk_size": Param(int, 200, "sessions per transaction"),
    }

    def step(self, *, params: dict[str, Any], checkpoint: dict[str, Any], run: JobRun) -> Step:
        idle = _or_default(params, "idle_minutes", settings.SESSION_IDLE_TIMEOUT_MINUTES)
        # The cutoff is fixed when the run starts and kept in the checkpoint, so
        # a resumed run closes exactly the sessions the first attempt would have.
        cutoff = checkpoint.get("cutoff") or (timezone.now() - timedelta(minutes=idle)).isoformat()
        idle_before = datetime.fromisoformat(cutoff)
        ids = context_selectors.session_idle_ids(
            idle_before=idle_before, after=checkpoint.get("after"), limit=params["chunk_size"]
        )
        closed = sum(1 for sid in ids if context_services.session_expire_idle(session_id=sid, idle_before=idle_before))
        return Step(
            done=len(ids),
            checkpoint={"cutoff": cutoff, "after": str(ids[-1]) if ids else checkpoint.get("after")},
            finished=len(ids) < params["chunk_size"],
            result={"closed": closed, "cutoff": cutoff},
        )


@register
class RetentionPurgeJob(Job):
    name = "retention_purge"
    queue = Queue.MAINTENANCE.value
    description = (
        "Delete old dead letters, published outbox rows, event dedupe records, idempotency keys, finished job runs, "
        "AI feedback, suggestions, finished inference requests, embeddings, never-promoted model versions "
        "and canary runs."
    )
    params = {
        "dead_letter_days": Param(int, None, "default: settings.RETENTION_DEAD_LETTER_DAYS"),
        "outbox_days": Param(int, None, "default: settings.RETENTION_OUTBOX_DAYS"),
        "processed_event_days": Param(int, None, "default: settings.RETENTION_PROCESSED_EVENT_DAYS"),
        "job_run_days": Param(int, None, "default: settings.RETENTION_JOB_RUN_DAYS"),
        "feedback_days": Param(int, None, "default: settings.RETENTION_FEEDBACK_DAYS"),
        "suggestion_days": Param(int, None, "default: settings.RETENTION_SUGGESTION_DAYS"),
        "inference_request_days": Param(int, None, "default: settings.RETENTION_INFERENCE_REQUEST_DAYS"),
        "embedding_days": Param(int, None, "default: settings.RETENTION_EMBEDDING_DAYS"),
        "model_version_days": Param(int, None, "default: settings.RETENTION_MODEL_VERSION_DAYS"),
        "canary_run_days": Param(int, None, "default: settings.RETENTION_CANARY_RUN_DAYS"),
    }
    # One target per step: each purge commits with its checkpoint, so a resumed
    # run skips the purges already done. Feedback goes before suggestions and
    # suggestions before requests: each purge frees rows for the next one.
    targets = (
        "dead_letters",
        "outbox",
        "processed_events",
        "idempotency_keys",
        "job_runs",
        "feedback",
        "suggestions",
        "inference_requests",
        "embeddings",
        "model_versions",
        "canary_runs",
    )

    def total(self, *, params: dict[str, Any]) -> int | None:
        return len(self.targets)

    def step(self, *, params: dict[str, Any], checkpoint: dict[str, Any], run: JobRun) -> Step:
        index = int(checkpoint.get("index", 0))
        target = self.targets[index]
        if "now" not in checkpoint:
            checkpoint["now"] = timezone.now().isoformat()
        now = datetime.fromisoformat(checkpoint["now"])
        deleted = self._purge(target, params=params, now=now)
        return Step(
            done=1,
            checkpoint={"now": checkpoint["now"], "index": index + 1},
            finished=index + 1 >= len(self.targets),
            result={f"deleted_{target}": deleted},
        )

    def _purge(self, target: str, *, params: dict[str, Any], now: datetime) -> int:
        if target == "dead_letters":
            days = _or_default(params, "dead_letter_days", settings.RETENTION_DEAD_LETTER_DAYS)
            purge = batch_hooks.dead_letter_purge
            return purge(older_than=now - timedelta(days=days)) if purge else 0
        if target == "outbox":
            days = _or_default(params, "outbox_days", settings.RETENTION_OUTBOX_DAYS)
            return eventbus_services.outbox_purge_published(older_than=now - timedelta(days=days))
        if target == "processed_events":
            days = _or_default(params, "processed_event_days", settings.RETENTION_PROCESSED_EVENT_DAYS)
            # Dedupe records must outlive any redelivery of their event; a week
            # is far beyond the broker's and the relay's retry horizons.
            return eventbus_services.processed_events_purge(older_than=timedelta(days=days))
        if target == "idempotency_keys":
            return idempotency_key_purge()  # the keys' own retention (IDEMPOTENCY_KEY_TTL_S, 24 h)
        if target == "job_runs":
            days = _or_default(params, "job_run_days", settings.RETENTION_JOB_RUN_DAYS)
            return batch_services.job_run_purge(older_than=now - timedelta(days=days))
        if target == "feedback":
            days = _or_default(params, "feedback_days", settings.RETENTION_FEEDBACK_DAYS)
            return ai_services.suggestion_feedback_purge(older_than=now - timedelta(days=days))
        if target == "suggestions":
            days = _or_default(params, "suggestion_days", settings.RETENTION_SUGGESTION_DAYS)
            return ai_services.suggestion_purge(older_than=now - timedelta(days=days))
        if target == "inference_requests":
            days = _or_default(params, "inference_request_days", settings.RETENTION_INFERENCE_REQUEST_DAYS)
            return ai_services.inference_request_purge(older_than=now - timedelta(days=days))
        if target == "embeddings":
            days = _or_default(params, "embedding_days", settings.RETENTION_EMBEDDING_DAYS)
            return ai_services.embedding_purge(older_than=now - timedelta(days=days))
        if target == "canary_runs":
            days = _or_default(params, "canary_run_days", settings.RETENTION_CANARY_RUN_DAYS)
            canary_purge = batch_hooks.canary_run_purge
            return canary_purge(older_than=now - timedelta(days=days)) if canary_purge else 0
        days = _or_default(params, "model_version_days", settings.RETENTION_MODEL_VERSION_DAYS)
        return ai_services.model_version_purge(older_than=now - timedelta(days=days))


@register
class DailyRollupJob(Job):
    name = "daily_rollup"
    queue = Queue.AI_BATCH.value
    description = "Per-session and per-user activity of one UTC day (default: yesterday)."
    params = {
        "day": Param(str, None, "YYYY-MM-DD (default: yesterday, UTC)"),
        "chunk_size": Param(int, 500, "sessions or users per transaction"),
    }

    def clean_params(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        cleaned = super().clean_params(raw)
        # Resolve the default now so the run's parameters (and a resume) name the day.
        if cleaned["day"] is None:
            cleaned["day"] = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
        try:
            date.fromisoformat(cleaned["day"])
        except ValueError as exc:
            raise ValidationFailed("day must be YYYY-MM-DD.", details={"day": [cleaned["day"]]}) from exc
        _at_least_one("chunk_size", cleaned["chunk_size"])
        return cleaned

    def step(self, *, params: dict[str, Any], checkpoint: dict[str, Any], run: JobRun) -> Step:
        day = date.fromisoformat(params["day"])
        limit = params["chunk_size"]
        phase = checkpoint.get("phase", "sessions")
        if phase == "sessions":
            ids = batch_selectors.sessions_active_on(day=day, after=checkpoint.get("after"), limit=limit)
            batch_services.daily_session_rollup_upsert(day=day, session_ids=ids)
            if len(ids) < limit:
                next_checkpoint: dict[str, Any] = {"phase": "users", "after": None}
            else:
                next_checkpoint = {"phase": "sessions", "after": str(ids[-1])}
            return Step(done=len(ids), checkpoint=next_checkpoint, finished=False, result={"sessions": len(ids)})
        user_ids = batch_selectors.users_active_on(day=day, after=checkpoint.get("after"), limit=limit)
        batch_services.daily_user_rollup_upsert(day=day, user_ids=user_ids)
        finished = len(user_ids) < limit
        return Step(
            done=len(user_ids),
            checkpoint={"phase": "users", "after": user_ids[-1] if user_ids else checkpoint.get("after")},
            finished=finished,
            result={"users": len(user_ids)},
        )


@register
class EmbeddingBackfillJob(Job):
    name = "embedding_backfill"
    queue = Queue.AI_BATCH.value
    description = "Embed text-bearing events that have no embedding yet (incremental from the last run)."
    params = {
        "chunk_size": Param(int, 64, "events per transaction (one model batch)"),
        "full": Param(bool, False, "rescan every event instead of continuing after the last run"),
        # Each run stops after this many events and the next continues from its
        # high-water mark: a big backlog is worked off in runs that stay well
        # inside the task time limit (20 min soft; ~50 texts/s on 2 busy cores).
        "max_items": Param(int, 20_000, "stop after this many events; the next run continues"),
    }

    def _start_after(self, params: dict[str, Any]) -> int:
        if params["full"]:
            return 0
        return batch_selectors.job_run_high_water(job_name=self.name, key="after_id")

    def total(self, *, params: dict[str, Any]) -> int | None:
        return min(batch_selectors.text_event_count(after_id=self._start_after(params)), params["max_items"])

    def step(self, *, params: dict[str, Any], checkpoint: dict[str, Any], run: JobRun) -> Step:
        from workers.batch.backfill import embed_missing

        after_id = checkpoint["after_id"] if "after_id" in checkpoint else self._start_after(params)
        limit = min(params["chunk_size"], params["max_items"] - run.progress_done)
        rows = batch_selectors.text_events_after(after_id=after_id, limit=limit)
        counts = embed_missing([text for _, text in rows]) if rows else {"embedded": 0, "skipped": 0}
        return Step(
            done=len(rows),
            checkpoint={"after_id": rows[-1][0] if rows else after_id},
            finished=len(rows) < params["chunk_size"] or run.progress_done + len(rows) >= params["max_items"],
            result={**counts, "scanned": len(rows)},
        )
