"""Tasks on ``ai.realtime``; run by ``celery -A project worker -Q ai.realtime --pool threads``.

Threads, not prefork: concurrent tasks of one worker process share one loaded
model and one micro-batcher, which is what lets their inputs meet in a batch.
The model is loaded and warmed when the worker starts (``celeryd_after_setup``
for a worker consuming ``ai.realtime``; ``worker_process_init`` for a prefork
child of one), not on the first request.

- ``ai.generate_suggestions(request_id)``: one inference request, claimed by
  conditional update with the task id as claim token, so a second delivery of
  the same request does nothing and a crash redelivery takes over.
- ``ai.embed_texts(texts)``: embed and store texts (warm-up, backfills); a
  text the model cannot take is a ``PoisonInput`` and dead-letters alone.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_task, signals
from django.conf import settings
from django.db import InterfaceError, OperationalError

from apps.ai import services as ai_services
from apps.eventbus.queues import Queue
from workers.base import TransientError, task
from workers.inference.runtime import PoisonInput

logger = logging.getLogger(__name__)

# Database hiccups and a full batcher are worth a retry; nothing else is.
RETRY_ON = (OperationalError, InterfaceError, TransientError, TimeoutError, ConnectionError)
MAX_ATTEMPTS = 5
# Largest text list one ``ai.embed_texts`` task takes (the payload cap bounds bytes).
EMBED_TEXTS_MAX = 256


def _task_id() -> str:
    request = getattr(current_task, "request", None)
    return str(getattr(request, "id", "") or "")


@task(
    name="ai.generate_suggestions",
    queue=Queue.AI_REALTIME,
    retry_on=RETRY_ON,
    fail_on=(PoisonInput,),
    max_attempts=MAX_ATTEMPTS,
)
def generate_suggestions(*, request_id: str, **kwargs: Any) -> dict[str, Any]:
    from workers.inference.pipeline import generate_for_request, processing_path

    claim_token = _task_id()
    replay = generate_suggestions.replay_id() is not None
    try:
        return generate_for_request(request_id=str(request_id), claim_token=claim_token, replay=replay).as_dict()
    except Exception as exc:
        final = not isinstance(exc, RETRY_ON) or generate_suggestions.attempt_number() >= MAX_ATTEMPTS
        if final:
            # The message is about to be dead-lettered: the request says so too.
            ai_services.inference_request_fail(
                request_id=request_id,
                claim_token=claim_token,
                error=f"{type(exc).__name__}: {exc}",
                processing_type=processing_path(replay=replay, attempts=generate_suggestions.attempt_number()),
            )
        raise


@task(
    name="ai.embed_texts",
    queue=Queue.AI_REALTIME,
    retry_on=RETRY_ON,
    fail_on=(PoisonInput, ValueError),
    max_attempts=MAX_ATTEMPTS,
)
def embed_texts_task(*, texts: list[str], **kwargs: Any) -> dict[str, Any]:
    from workers.inference.embeddings import embed_texts

    if not isinstance(texts, list) or len(texts) > EMBED_TEXTS_MAX:
        raise ValueError(f"texts must be a list of at most {EMBED_TEXTS_MAX} strings")
    vectors = embed_texts(texts)
    return {"embedded": len(vectors)}


def _consumes_realtime(app: Any) -> bool:
    try:
        return Queue.AI_REALTIME.value in app.amqp.queues.consume_from
    except Exception:  # noqa: BLE001 - unknown selection: warm only when asked
        return False


def _warm(reason: str) -> None:
    if not settings.AI_WARM_ON_START:
        return
    from workers.inference.runtime import runtime

    rt = runtime()
    logger.info("inference worker warm", extra={"reason": reason, **rt.describe()})


@signals.celeryd_after_setup.connect
def _warm_realtime_worker(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    app = getattr(instance, "app", None)
    if app is None or not _consumes_realtime(app):
        return
    pool = str(getattr(instance, "pool_cls", "") or "")
    if "prefork" in pool.lower():
        return  # each child loads its own copy in worker_process_init
    _warm("worker start")


@signals.worker_process_init.connect
def _warm_prefork_child(sender: Any = None, **kwargs: Any) -> None:
    from celery import current_app

    if _consumes_realtime(current_app):
        _warm("prefork child start")
