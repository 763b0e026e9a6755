"""The batch job framework: named jobs, chunked work, checkpoints, one run at a time.

Declare a job by subclassing ``Job`` and decorating it with ``@register``::

    @register
    class SessionExpiryJob(Job):
        name = "session_expiry"
        queue = "maintenance"
        params = {"idle_minutes": Param(int, 60, "close sessions idle this long")}

        def step(self, *, params, checkpoint, run) -> Step:
            ...  # one chunk of work, inside the framework's transaction
            return Step(done=n, checkpoint={"after": last_id}, finished=n < chunk)

``job_execute(name=..., params=...)`` runs it: every ``step`` runs in one
transaction together with the update of the run's progress and checkpoint, so
a process killed at any instant leaves the checkpoint of the last committed
chunk, never half a chunk. The next start of the same job with the same
parameters resumes that run from its checkpoint.

"Once at a time" has two parts. The partial unique constraint on
``JobRun(job_name) WHERE status='running'`` makes a second running row
impossible. A session-level PostgreSQL advisory lock on the job name, held for
the whole run, says whether the process owning that row is alive: PostgreSQL
drops it when the owner's connection dies (kill -9 included), so a starter that
gets the lock and finds a ``running`` row knows its owner is dead and resumes
it; a starter that does not get the lock gets ``JobAlreadyRunning``.

The lock lives on the connection the chunks commit through, so a runner whose
connection dies (a PostgreSQL restart, ``pg_terminate_backend``, a network cut)
has lost it, and a second runner may take the run over at once. The runner
checks, inside each chunk's transaction, before the step and again before the
commit, that this very session still holds the lock (``pg_locks`` for
``pg_backend_pid()``): a connection Django reopened in between does not hold
it. A runner that lost its lock raises ``JobLockLost`` and writes nothing more
to the run (no "failed" over a run a second runner now owns); the run stays
``running`` for whoever holds the lock next, which resumes it from the last
committed checkpoint (the Celery tasks retry, so they re-acquire or, finding
it held, stand down).

The jobs themselves live in ``workers/`` (``settings.BATCH_JOB_MODULES``) and
register here when the operations layer imports them at startup
(``apps/ops/apps.py``): this app never imports the layer above it. torch is
imported only inside ``workers/``, and only when a training step runs.
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.db import DatabaseError, InterfaceError, connection, transaction

from apps.batch import services
from apps.batch.models import JobRun
from apps.common.exceptions import Conflict, NotFound, ValidationFailed

logger = logging.getLogger(__name__)

# First half of the two-int advisory lock key: a namespace so job locks never
# collide with another feature's advisory locks (ASCII "JOBS").
ADVISORY_NAMESPACE = 0x4A4F4253


class JobAlreadyRunning(Conflict):
    code = "job_running"


class JobLockLost(Conflict):
    """The runner's lock connection died mid-run: it stopped; whoever holds the lock next resumes the run."""

    code = "job_lock_lost"


@dataclass(frozen=True)
class Param:
    type: type
    default: Any = None
    help: str = ""


@dataclass
class Step:
    """What one chunk did: items processed, the checkpoint after it, whether the job is done."""

    done: int
    checkpoint: dict[str, Any]
    finished: bool
    result: dict[str, Any] = field(default_factory=dict)


class Job:
    name: ClassVar[str]
    queue: ClassVar[str]
    description: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}

    # Parameters every job understands. pause_ms sleeps between chunks to cap
    # the load a long backfill puts on the database.
    common_params: ClassVar[dict[str, Param]] = {
        "pause_ms": Param(int, 0, "sleep between chunks (milliseconds)"),
    }

    def all_params(self) -> dict[str, Param]:
        return {**self.common_params, **self.params}

    def clean_params(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        """Coerce ``raw`` (JSON from beat, strings from the CLI) to typed values with defaults."""
        spec = self.all_params()
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(spec))
        if unknown:
            raise ValidationFailed(
                f"Unknown parameters for job {self.name!r}.",
                details={"unknown": unknown, "allowed": sorted(spec)},
            )
        cleaned: dict[str, Any] = {}
        for key, param in spec.items():
            value = raw.get(key, param.default)
            if value is None:
                cleaned[key] = None
                continue
            try:
                cleaned[key] = _coerce(value, param.type)
            except (TypeError, ValueError) as exc:
                raise ValidationFailed(
                    f"Parameter {key!r} must be {param.type.__name__}.", details={key: [str(value)]}
                ) from exc
        return cleaned

    def total(self, *, params: dict[str, Any]) -> int | None:
        """How many items the run will process, when it can be known up front."""
        return None

    def step(self, *, params: dict[str, Any], checkpoint: dict[str, Any], run: JobRun) -> Step:
        raise NotImplementedError


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if kind is int and isinstance(value, bool):
        raise TypeError(value)
    return kind(value)


_REGISTRY: dict[str, Job] = {}


def register(job_cls: type[Job]) -> type[Job]:
    _REGISTRY[job_cls.name] = job_cls()
    return job_cls


def job_get(*, name: str) -> Job:
    job = _REGISTRY.get(name)
    if job is None:
        raise NotFound(f"No job named {name!r}.", details={"jobs": sorted(_REGISTRY)})
    return job


def job_names() -> list[str]:
    return sorted(_REGISTRY)


def _lock_key(name: str) -> int:
    # crc32 is unsigned; pg_try_advisory_lock(int4, int4) wants a signed int4.
    value = zlib.crc32(name.encode())
    return value - 2**32 if value >= 2**31 else value


def _try_lock(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [ADVISORY_NAMESPACE, _lock_key(name)])
        return bool(cursor.fetchone()[0])


def _lock_held(name: str) -> bool:
    """Whether this very session (not a reconnected one) holds the job's lock. Never reconnects."""
    if connection.connection is None:
        return False  # closed after an error: a new connection would not hold it
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid"
                " AND objid = %s::oid AND objsubid = 2 AND pid = pg_backend_pid() AND granted)",
                [ADVISORY_NAMESPACE, _lock_key(name) % 2**32],
            )
            return bool(cursor.fetchone()[0])
    except (DatabaseError, InterfaceError):  # the connection is dead: so is the lock
        return False


def _check_lock(name: str, run: JobRun) -> None:
    if not _lock_held(name):
        raise JobLockLost(
            f"Job {name!r} lost its lock (its database connection died); stopped.",
            details={"job": name, "run_id": str(run.pk)},
        )


def _unlock(name: str) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_NAMESPACE, _lock_key(name)])
    except Exception:  # a dead connection has dropped the lock already
        logger.warning("advisory unlock failed", extra={"job": name}, exc_info=True)


def default_worker_name() -> str:
    import os

    return f"{socket.gethostname()}:{os.getpid()}"


ProgressCallback = Callable[[JobRun], None]


def job_execute(
    *,
    name: str,
    params: dict[str, Any] | None = None,
    trigger: str = "manual",
    worker: str = "",
    on_progress: ProgressCallback | None = None,
) -> JobRun:
    """Run job ``name`` to the end (or resume its dead run) and return the finished ``JobRun``.

    Raises ``JobAlreadyRunning`` when a live process runs it, ``ValidationFailed``
    for bad parameters, ``JobLockLost`` when its lock connection died mid-run
    (the run is left to the next lock holder), and re-raises the job's own
    exception after marking the run ``failed``.
    """
    job = job_get(name=name)
    cleaned = job.clean_params(params)
    worker = worker or default_worker_name()
    # Session-level, so it outlives the per-chunk transactions; released below
    # or by PostgreSQL when this connection dies.
    connection.ensure_connection()
    if not _try_lock(name):
        raise JobAlreadyRunning(f"Job {name!r} is already running.", details={"job": name})
    lost = False
    try:
        run = services.job_run_claim(job_name=name, parameters=cleaned, trigger=trigger, worker=worker)
        if run.progress_total is None and run.resume_count == 0:
            total = job.total(params=cleaned)
            if total is not None:
                run = services.job_run_set_total(run=run, total=total)
        logger.info(
            "job started",
            extra={"job": name, "run_id": str(run.id), "resume_count": run.resume_count, "done": run.progress_done},
        )
        if on_progress:
            on_progress(run)
        pause_s = (cleaned.get("pause_ms") or 0) / 1000
        try:
            while True:
                with transaction.atomic():
                    # Fenced both sides: no step starts, and no chunk commits, without the lock.
                    _check_lock(name, run)
                    step = job.step(params=cleaned, checkpoint=dict(run.checkpoint), run=run)
                    _check_lock(name, run)
                    run = services.job_run_progress(
                        run=run, step_done=step.done, checkpoint=step.checkpoint, result=step.result
                    )
                if on_progress:
                    on_progress(run)
                if step.finished:
                    break
                if pause_s:
                    time.sleep(pause_s)
        except JobLockLost:
            lost = True
            logger.error("job lost its lock; stopped", extra={"job": name, "run_id": str(run.id)})
            raise
        except Exception as exc:
            if not _lock_held(name):
                # The error took the connection (and the lock) with it: the run may be
                # another runner's by now, so it is not ours to mark failed.
                lost = True
                logger.error("job lost its lock; stopped", extra={"job": name, "run_id": str(run.id)})
                raise JobLockLost(
                    f"Job {name!r} lost its lock (its database connection died); stopped.",
                    details={"job": name, "run_id": str(run.id)},
                ) from exc
            services.job_run_fail(run=run, error="".join(traceback.format_exception(exc))[-4000:])
            logger.exception("job failed", extra={"job": name, "run_id": str(run.id)})
            raise
        run = services.job_run_finish(run=run)
        logger.info("job finished", extra={"job": name, "run_id": str(run.id), "done": run.progress_done})
        return run
    finally:
        if not lost:
            _unlock(name)


def job_names_locked(*, names: set[str]) -> set[str]:
    """Which of these jobs some process is running now (holds the lock): one query for a page of runs."""
    if not names:
        return set()
    by_key = {_lock_key(name) % 2**32: name for name in names}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid AND granted",
            [ADVISORY_NAMESPACE],
        )
        return {by_key[row[0]] for row in cursor.fetchall() if row[0] in by_key}


def job_run_is_live(*, run: JobRun) -> bool:
    """Whether a process holds the job's lock (from another connection than ours)."""
    if run.status != JobRun.Status.RUNNING:
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid AND objid = %s::oid"
            " AND granted",
            [ADVISORY_NAMESPACE, _lock_key(run.job_name) % 2**32],
        )
        return cursor.fetchone()[0] > 0
