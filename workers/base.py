"""One task base class for every task: names, logging, metrics, failure classification.

Declaring a task (module ``workers/<pkg>/tasks.py``, autodiscovered)::

    from workers.base import PermanentError, TransientError, task
    from apps.eventbus.queues import Queue

    @task(name="ai.generate_suggestions", queue=Queue.AI_REALTIME,
          retry_on=(TransientError, ConnectionError), fail_on=(ValueError,),
          ignore=(AlreadyDone,), max_attempts=5)
    def generate_suggestions(*, request_id: str, **kwargs) -> None:
        ...  # keyword-only JSON arguments; **kwargs so old and new workers coexist

    generate_suggestions.delay(request_id=str(req.id))   # or apply_async(kwargs=...)

What happens on an exception (first match wins):

- ``ignore``: logged, the message is acked; outcome ``ignored``.
- ``fail_on`` (and ``PermanentError``, invalid arguments, oversized payload):
  the message is rejected without requeue: RabbitMQ dead-letters it into
  ``<queue>.dlq``; outcome ``dead_lettered``, reason ``rejected``.
- ``retry_on`` (and ``TransientError``, and a database that cannot be reached:
  Django's ``OperationalError``/``InterfaceError``, a PostgreSQL restart or
  failover; the chaos suite's ``restart-postgres`` dead-lettered good tasks
  before): retried with exponential backoff and
  full jitter (native delayed delivery on quorum queues) while the attempt
  budget lasts; then dead-lettered with reason ``retries_exhausted``.
- anything else: treated as permanent (dead-lettered); a bug is not transient.

A direct call (``generate_suggestions(request_id=...)``, as in a unit test)
just runs the function and raises its own exceptions; ``apply()`` runs the
whole classification eagerly.

One attempt budget: Celery retries republish the message, which resets the
broker's delivery count, so the attempt number travels in the ``ce_attempt``
header (plus the quorum queue's ``x-delivery-count`` for crash redeliveries).
The broker's ``x-delivery-limit`` is the backstop for a task that kills its
worker every time. Before rejecting, the exception class, message and
traceback are written to ``ops.TaskFailure`` keyed by task id; the dead-letter
archiver joins them onto the ``DeadLetter`` row.

Correlation id: ``before_task_publish`` copies the current id
(``apps.common.logging``) into the ``ce_correlation_id`` header; the base class
restores it around the task so every log line of the task carries it.

Publishing a task message without Celery (the outbox relay, dead-letter
replay): ``apps.eventbus.messages.build_task_message``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import time
import traceback as traceback_module
from collections.abc import Callable
from typing import Any

import celery
from celery import shared_task, signals
from celery.exceptions import Ignore, Reject, Retry
from django.db import InterfaceError, OperationalError

from apps.common.backoff import backoff_delay
from apps.common.logging import get_correlation_id, new_correlation_id, set_correlation_id
from apps.common.metrics import TASK_DURATION, TASK_QUEUE_WAIT, TASKS
from apps.eventbus.hooks import hooks
from apps.eventbus.messages import (
    HEADER_ATTEMPT,
    HEADER_CORRELATION_ID,
    HEADER_DELIVERY_COUNT,
    HEADER_PUBLISHED_AT,
    HEADER_REPLAY_ID,
    REASON_REJECTED,
    REASON_RETRIES_EXHAUSTED,
    TASK_PAYLOAD_MAX_BYTES,
    PayloadTooLargeError,
)
from apps.eventbus.queues import Queue, queue_for_task_name

logger = logging.getLogger("workers.task")

DEFAULT_MAX_ATTEMPTS = 5
# The database is down or restarting: retried whatever the task declares (not a bug of the task).
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)


class PermanentError(Exception):
    """Raise from a task to dead-letter it now: retrying cannot help."""


class TransientError(Exception):
    """Raise from a task to retry it with backoff (bounded by the attempt budget)."""


class InvalidTaskArguments(PermanentError):
    pass


class PayloadTooLarge(PayloadTooLargeError, PermanentError):
    """An oversized task payload: dead-lettered unrun (the builder's own refusal, made permanent)."""


# --- metrics ---------------------------------------------------------------

# Outcome names as apps.ops.metrics labels them.
_PROM_OUTCOME = {
    "succeeded": "success",
    "retried": "retry",
    "dead_lettered": "rejected",
    "ignored": "ignored",
    "killed": "failure",
}


def _run_started(queue: str, published_at: Any) -> None:
    """Queue wait into Prometheus, and the start to the fleet counters (``hooks.task_started``)."""
    try:
        published = float(published_at) if published_at is not None else None
    except (TypeError, ValueError):
        published = None
    with contextlib.suppress(Exception):  # metrics must never fail a task
        if published is not None:
            TASK_QUEUE_WAIT.labels(queue=queue).observe(max(0.0, time.time() - published))
        if hooks.task_started is not None:
            hooks.task_started(queue=queue, published_at=published)


def _run_finished(queue: str, seconds: float) -> None:
    if hooks.task_finished is not None:
        with contextlib.suppress(Exception):  # metrics must never fail a task
            hooks.task_finished(queue=queue, duration=seconds)


def _observe(task_name: str, queue: str, outcome: str, seconds: float) -> None:
    """One finished run into the Prometheus series of ``apps.common.metrics`` (multi-process aware)."""
    label = _PROM_OUTCOME.get(outcome, outcome)
    with contextlib.suppress(Exception):  # metrics must never fail a task
        TASKS.labels(task=task_name, queue=queue, outcome=label).inc()
        TASK_DURATION.labels(task=task_name, queue=queue, outcome=label).observe(seconds)


# --- the base class --------------------------------------------------------


def backoff_seconds(attempt: int, *, base: float, cap: float) -> int:
    """Exponential backoff with full jitter, whole seconds (native delayed delivery's unit), at least 1."""
    return max(1, round(backoff_delay(attempt, base=base, cap=cap, floor=0.5)))


def _header_int(request: Any, key: str, default: int) -> int:
    value = request.get(key) if hasattr(request, "get") else None
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(key)
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _header(request: Any, key: str) -> Any:
    value = request.get(key) if hasattr(request, "get") else None
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(key)
    return value


class BaseTask(celery.Task):
    """Base class of every task; use the ``task`` decorator rather than subclassing."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    # Celery's own retry cap is off: the attempt budget below is the only limit.
    max_retries = None
    retry_on: tuple[type[BaseException], ...] = ()
    fail_on: tuple[type[BaseException], ...] = ()
    ignore: tuple[type[BaseException], ...] = ()
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = 2.0
    backoff_max: float = 300.0

    def attempt_number(self) -> int:
        """1 for the first run; counts Celery retries and crash redeliveries alike."""
        return _header_int(self.request, HEADER_ATTEMPT, 1) + _header_int(self.request, HEADER_DELIVERY_COUNT, 0)

    def _check_arguments(self, args: tuple, kwargs: dict) -> None:
        try:
            size = len(json.dumps([list(args), kwargs], default=str))
        except (TypeError, ValueError) as exc:
            raise InvalidTaskArguments(f"arguments are not JSON: {exc}") from exc
        if size > TASK_PAYLOAD_MAX_BYTES:
            raise PayloadTooLarge(f"task payload is {size} bytes, over the {TASK_PAYLOAD_MAX_BYTES} byte limit")
        try:
            inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidTaskArguments(f"invalid arguments for {self.name}: {exc}") from exc

    def _classify(self, exc: BaseException) -> str:
        if self.ignore and isinstance(exc, self.ignore):
            return "ignore"
        if isinstance(exc, PermanentError) or (self.fail_on and isinstance(exc, self.fail_on)):
            return "fail"
        if isinstance(exc, TransientError) or (self.retry_on and isinstance(exc, self.retry_on)):
            return "retry"
        if isinstance(exc, DATABASE_UNAVAILABLE):
            return "retry"
        return "fail"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            # A plain function call (a unit test, a shell): no message to
            # retry or reject, so the caller gets the task's own exception.
            return self.run(*args, **kwargs)
        queue = self.queue or queue_for_task_name(self.name).value
        correlation_id = _header(request, HEADER_CORRELATION_ID) or get_correlation_id() or new_correlation_id()
        token = set_correlation_id(correlation_id)
        attempt = self.attempt_number()
        log = {"task": self.name, "task_id": request.id, "queue": queue, "attempt": attempt}
        started = time.monotonic()
        _run_started(queue, _header(request, HEADER_PUBLISHED_AT))
        outcome = "succeeded"
        try:
            self._check_arguments(args, kwargs)
            result = self.run(*args, **kwargs)
            self._on_replay_outcome("succeeded", None)
            return result
        except (Retry, Ignore, Reject):
            outcome = "control"
            raise
        except BaseException as exc:  # every failure is classified below
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                outcome = "killed"
                raise
            decision = self._classify(exc)
            if decision == "ignore":
                outcome = "ignored"
                logger.info("task ignored %s", type(exc).__name__, extra={**log, "outcome": outcome})
                return None
            if decision == "retry" and attempt < self.max_attempts:
                outcome = "retried"
                countdown = backoff_seconds(attempt, base=self.backoff_base, cap=self.backoff_max)
                logger.warning(
                    "task retry in %ss: %s: %s", countdown, type(exc).__name__, exc, extra={**log, "outcome": outcome}
                )
                headers = {HEADER_CORRELATION_ID: correlation_id, HEADER_ATTEMPT: attempt + 1}
                replay_id = _header(request, HEADER_REPLAY_ID)
                if replay_id:
                    headers[HEADER_REPLAY_ID] = replay_id
                raise self.retry(exc=exc, countdown=countdown, max_retries=None, headers=headers) from exc
            reason = REASON_RETRIES_EXHAUSTED if decision == "retry" else REASON_REJECTED
            outcome = "dead_lettered"
            tb = "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
            logger.error(
                "task dead-lettered (%s) %s: %s",
                reason,
                type(exc).__name__,
                exc,
                extra={**log, "outcome": outcome, "reason": reason},
            )
            record_task_failure(
                task_id=request.id,
                task_name=self.name,
                queue=queue,
                exc=exc,
                traceback=tb,
                attempts=attempt,
                reason=reason,
            )
            raise Reject(f"{reason}: {type(exc).__name__}: {exc}", requeue=False) from exc
        finally:
            elapsed = time.monotonic() - started
            if outcome != "control":
                _observe(self.name, queue, outcome, elapsed)
            _run_finished(queue, elapsed)
            logger.info("task finished", extra={**log, "outcome": outcome, "duration_ms": round(elapsed * 1000, 2)})
            _reset(token)

    def replay_id(self) -> str | None:
        """The dead-letter replay this run belongs to (an operator asked for it), else None."""
        value = _header(self.request, HEADER_REPLAY_ID)
        return str(value) if value else None

    def _on_replay_outcome(self, status: str, error: str | None) -> None:
        replay_id = _header(self.request, HEADER_REPLAY_ID)
        if not replay_id:
            return
        if hooks.replay_finished is None:
            return
        try:
            hooks.replay_finished(replay_id=str(replay_id), status=status, error=error)
        except Exception:  # auditing must not fail the task
            logger.exception("could not record the replay outcome", extra={"replay_id": replay_id})


def _reset(token: Any) -> None:
    from apps.common.logging import correlation_id

    try:
        correlation_id.reset(token)
    except ValueError:
        correlation_id.set(None)


def record_task_failure(
    *,
    task_id: str | None,
    task_name: str,
    queue: str,
    exc: BaseException | None,
    traceback: str,
    attempts: int,
    reason: str,
    exception_class: str | None = None,
    message: str | None = None,
) -> None:
    """Write the failure where the archiver finds it; never raises (the reject must still happen)."""
    if not task_id or hooks.failure_recorded is None:
        return
    try:
        hooks.failure_recorded(
            task_id=str(task_id),
            task_name=task_name,
            queue=queue,
            exception_class=exception_class or (type(exc).__name__ if exc is not None else ""),
            exception_message=message if message is not None else (str(exc) if exc is not None else ""),
            traceback=traceback,
            attempts=attempts,
            reason=reason,
        )
    except Exception:  # the dead letter matters more than its annotation
        logger.exception("could not record the task failure", extra={"task_id": task_id})


def task(
    *,
    name: str,
    queue: Queue | str,
    retry_on: tuple[type[BaseException], ...] = (),
    fail_on: tuple[type[BaseException], ...] = (),
    ignore: tuple[type[BaseException], ...] = (),
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff_base: float = 2.0,
    backoff_max: float = 300.0,
    **options: Any,
) -> Callable[[Callable[..., Any]], BaseTask]:
    """Declare a task with an explicit stable name and queue (see the module docstring)."""
    if not name or "." not in name:
        raise ValueError("task names are explicit and dotted, e.g. 'ai.generate_suggestions'")

    def decorator(fn: Callable[..., Any]) -> BaseTask:
        return shared_task(
            name=name,
            base=BaseTask,
            queue=Queue(queue).value,
            retry_on=tuple(retry_on),
            fail_on=tuple(fail_on),
            ignore=tuple(ignore),
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            **options,
        )(fn)

    return decorator


@signals.before_task_publish.connect
def _stamp_headers(headers: dict | None = None, **kwargs: Any) -> None:
    """Every task message carries the correlation id and its attempt number."""
    if headers is None:
        return
    headers.setdefault(HEADER_CORRELATION_ID, get_correlation_id() or new_correlation_id())
    headers.setdefault(HEADER_ATTEMPT, 1)
