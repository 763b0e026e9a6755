"""A model promoted by the training job is used by the next request of a running realtime worker.

A real ``celery worker -Q ai.realtime --pool threads`` process answers a
suggestion request with the frequency baseline; the training job (run here)
promotes a trained version; the same worker process, not restarted, answers
the next request with that version; after an operator rollback it is back to
the baseline. The task is sent straight to the queue (no relay needed here):
the outbox path is the event-bus tests' business.
"""

from __future__ import annotations

import pytest

from apps.ai.models import InferenceRequest, ModelVersion, Suggestion
from apps.batch.jobs import job_execute
from apps.batch.synthetic import SyntheticConfig, training_data_generate
from apps.context.services import EventInput, context_event_append, session_create
from tests.integration.batch.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _ask(session, user, action: str) -> str:
    """Append an action, create the request as a context update would, send its task; the label used."""
    from apps.ai import services as ai_services
    from project.celery import app

    event = context_event_append(session=session, author=user, events=[EventInput("user_action", {"action": action})])[
        0
    ]
    request = ai_services.inference_request_trigger(session_id=session.id, trigger_seq=event.seq, user_id=user.pk)
    assert request is not None
    app.send_task("ai.generate_suggestions", kwargs={"request_id": str(request.id)}, queue="ai.realtime")

    def done() -> InferenceRequest | None:
        current = InferenceRequest.objects.get(pk=request.pk)
        return current if current.status in ("done", "failed") else None

    finished = wait_for(done, timeout=180, message="the suggestion request")
    assert finished.status == "done", finished.error
    labels = set(Suggestion.objects.filter(request=request, kind="next_action").values_list("model_version", flat=True))
    assert len(labels) == 1, labels
    return labels.pop()


def test_promoted_version_is_used_by_the_running_worker_without_restart(processes, django_user_model):
    from apps.ai import services as ai_services

    # The worker loads its models while the data is written (both take a while on 2 cores).
    worker = processes.worker("realtime-w1", "ai.realtime", pool="threads")
    training_data_generate(config=SyntheticConfig(sessions=30, min_actions=30, max_actions=40, seed=11), users=3)
    user = django_user_model.objects.create_user(username="hot")
    session = session_create(owner=user, title="hot reload")
    context_event_append(
        session=session, author=user, events=[EventInput("user_action", {"action": a}) for a in ("search", "open_doc")]
    )
    pids = (worker.process.pid, tuple(worker.children()))

    assert _ask(session, user, "edit") == "next_action-baseline"

    run = job_execute(name="train_next_action", params={"epochs": 6, "eval_percent": 25, "device": "cpu"})
    assert run.result["promoted"] is True, run.result["metrics"]["decision"]
    promoted = ModelVersion.objects.get(promoted=True)

    assert _ask(session, user, "save") == promoted.label == "next_action@1"

    ai_services.model_version_rollback()
    assert _ask(session, user, "preview") == "next_action-baseline"
    assert worker.process.poll() is None and (worker.process.pid, tuple(worker.children())) == pids
