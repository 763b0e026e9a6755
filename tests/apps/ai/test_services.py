"""apps.ai services: coalescing, claims, completion, feedback, model versions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from django.db import connection

from apps.ai import selectors, services
from apps.ai.models import Embedding, InferenceRequest, ModelVersion, Suggestion, SuggestionFeedback
from apps.common.exceptions import NotFound, ValidationFailed
from apps.eventbus.models import OutboxMessage

pytestmark = pytest.mark.django_db


def _task_rows():
    return OutboxMessage.objects.filter(kind=OutboxMessage.Kind.TASK, headers__task=services.TASK_NAME)


def _events(event_type: str):
    return OutboxMessage.objects.filter(kind=OutboxMessage.Kind.EVENT, routing_key=event_type)


def test_trigger_creates_one_request_and_one_task_message(ai_session, user):
    request = services.inference_request_trigger(
        session_id=ai_session.pk, trigger_seq=1, user_id=user.pk, correlation_id="cid-1"
    )
    assert request is not None
    assert request.status == InferenceRequest.Status.PENDING
    assert request.kind == InferenceRequest.Kind.AUTO
    rows = list(_task_rows())
    assert len(rows) == 1
    assert rows[0].routing_key == "ai.realtime"
    assert rows[0].body[1] == {"request_id": str(request.id)}


def test_updates_while_pending_move_the_trigger_seq_forward_instead_of_queueing(ai_session, user):
    first = services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk)
    assert services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=3, user_id=user.pk) is None
    # An older seq delivered late never moves it back.
    assert services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=2, user_id=user.pk) is None
    first.refresh_from_db()
    assert first.trigger_seq == 3
    assert first.coalesced == 3
    assert InferenceRequest.objects.count() == 1
    assert _task_rows().count() == 1


def test_an_update_after_the_claim_starts_a_new_request(ai_session, user):
    first = services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk)
    assert services.inference_request_claim(request_id=first.pk, claim_token="task-1") is not None
    second = services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=2, user_id=user.pk)
    assert second is not None and second.pk != first.pk
    assert _task_rows().count() == 2


def test_trigger_ignores_closed_or_missing_sessions_and_users_who_turned_ai_off(ai_session, user, session_factory):
    from apps.context import services as context_services

    assert services.inference_request_trigger(session_id="not-a-uuid", trigger_seq=1) is None
    context_services.preferences_update(user=user, ai_enabled=False)
    assert services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk) is None
    context_services.preferences_update(user=user, ai_enabled=True)
    context_services.session_close(session=ai_session, actor=user)
    assert services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk) is None
    assert InferenceRequest.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_triggers_make_one_request(ai_session, user):
    # Given eight deliveries of context updates racing for the same session
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def trigger(seq: int) -> None:
        try:
            barrier.wait()
            services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=seq, user_id=user.pk)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=trigger, args=(seq,)) for seq in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # Then one pending request stands for all of them, with the latest seq, and one task message
    assert errors == []
    request = InferenceRequest.objects.get()
    assert request.trigger_seq == 8
    assert request.coalesced == 8
    assert _task_rows().count() == 1


def test_claim_is_conditional_and_a_redelivery_of_the_same_task_takes_over(ai_session, user):
    request = services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk)
    claimed = services.inference_request_claim(request_id=request.pk, claim_token="task-a")
    assert claimed.status == InferenceRequest.Status.RUNNING and claimed.attempts == 1
    # Another delivery (a duplicate publish) gets nothing.
    assert services.inference_request_claim(request_id=request.pk, claim_token="task-b") is None
    # The same task redelivered after its worker died takes it again.
    again = services.inference_request_claim(request_id=request.pk, claim_token="task-a")
    assert again is not None and again.attempts == 2
    assert services.inference_request_claim(request_id="nonsense", claim_token="x") is None


def test_complete_stores_suggestions_once_and_publishes_events(ai_session, user, append):
    append(ai_session, ("context_update", {"text": "hello"}))
    request = services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk)
    services.inference_request_claim(request_id=request.pk, claim_token="t1")
    drafts = [
        services.SuggestionDraft(
            kind="related_context",
            content={"text": "x", "seq": 1},
            score=0.9,
            source_seqs=[1],
            explanation={"method": "hybrid", "dense": 0.9, "matched_terms": ["x"]},
        ),
        services.SuggestionDraft(kind="next_action", content={"action": "share"}, score=0.5, source_seqs=[1]),
        services.SuggestionDraft(kind="next_action", content={"action": "comment"}, score=0.3, source_seqs=[1]),
    ]
    stored = services.inference_request_complete(
        request_id=request.pk,
        claim_token="t1",
        drafts=drafts,
        model_version="m+b",
        input_size=3,
        model_versions_by_kind={"next_action": "next_action-baseline"},
    )
    assert len(stored) == 3
    # A second completion (a duplicate delivery that somehow got here) writes nothing.
    assert (
        services.inference_request_complete(
            request_id=request.pk, claim_token="t1", drafts=drafts, model_version="m+b", input_size=3
        )
        is None
    )
    assert Suggestion.objects.count() == 3
    request.refresh_from_db()
    assert request.status == InferenceRequest.Status.DONE and request.finished_at is not None
    body = selectors.inference_request_to_dict(request)
    assert {s["kind"] for s in body["suggestions"]} == {"related_context", "next_action"}
    na = [s for s in body["suggestions"] if s["kind"] == "next_action"]
    assert {s["model_version"] for s in na} == {"next_action-baseline"}
    related = next(s for s in body["suggestions"] if s["kind"] == "related_context")
    assert related["explanation"] == {"method": "hybrid", "dense": 0.9, "matched_terms": ["x"]}
    assert set(body["suggestions"][0]) == {
        "id",
        "kind",
        "content",
        "score",
        "source_seqs",
        "trigger_seq",
        "model_version",
        "explanation",
        "created_at",
    }
    generated = _events("suggestion.generated").get()
    assert generated.body["data"]["inference_request_id"] == str(request.id)
    assert len(generated.body["data"]["suggestion_ids"]) == 3
    processing = _events("ai.processing").get()
    assert processing.body["data"]["processing_type"] == "realtime"
    assert processing.body["data"]["input_size"] == 3
    assert processing.body["data"]["model_version"] == "m+b"


def test_complete_pushes_its_frames_and_presence_after_commit(
    ai_session, user, monkeypatch, django_capture_on_commit_callbacks
):
    from apps.ai import push

    frames: list = []
    states: list = []
    monkeypatch.setattr(push, "broadcast_many", lambda *, session_id, messages: frames.append((session_id, messages)))
    monkeypatch.setattr(push, "presence_ai_state", lambda *, session_id, state: states.append(state))
    request = services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk)
    services.inference_request_claim(request_id=request.pk, claim_token="t")
    with django_capture_on_commit_callbacks(execute=True):
        [stored] = services.inference_request_complete(
            request_id=request.pk,
            claim_token="t",
            drafts=[services.SuggestionDraft(kind="next_action", content={"action": "share"}, score=0.5)],
            model_version="m",
            input_size=1,
        )
    expected = {"type": "suggestion", "request_id": str(request.pk), **selectors.suggestion_to_dict(stored)}
    assert frames == [(ai_session.pk, [expected])]
    assert states == ["generating", None]


def test_a_delivery_that_lost_its_claim_cannot_complete(ai_session, user):
    request = services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk)
    services.inference_request_claim(request_id=request.pk, claim_token="owner")
    assert (
        services.inference_request_complete(
            request_id=request.pk, claim_token="intruder", drafts=[], model_version="m", input_size=0
        )
        is None
    )
    request.refresh_from_db()
    assert request.status == InferenceRequest.Status.RUNNING


def test_fail_marks_the_request_and_a_replay_of_the_same_task_may_run_it_again(ai_session, user):
    request = services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk)
    services.inference_request_claim(request_id=request.pk, claim_token="t")
    assert services.inference_request_fail(request_id=request.pk, claim_token="t", error="PoisonInput: bad")
    request.refresh_from_db()
    assert request.status == InferenceRequest.Status.FAILED and "PoisonInput" in request.error
    assert _events("ai.processing").get().body["data"]["status"] == "failed"
    assert services.inference_request_claim(request_id=request.pk, claim_token="other") is None
    assert services.inference_request_claim(request_id=request.pk, claim_token="t") is not None


def test_query_request_validates_its_input(ai_session, user, other_user):
    with pytest.raises(ValidationFailed):
        services.inference_request_create_query(session_id=ai_session.pk, user=user, query="   ")
    with pytest.raises(ValidationFailed):
        services.inference_request_create_query(session_id=ai_session.pk, user=user, query="x" * 2001)
    with pytest.raises(ValidationFailed):
        services.inference_request_create_query(session_id=ai_session.pk, user=user, query=["list"])
    with pytest.raises(NotFound):
        services.inference_request_create_query(session_id=ai_session.pk, user=other_user, query="hi")
    assert InferenceRequest.objects.count() == 0
    request = services.inference_request_create_query(session_id=ai_session.pk, user=user, query=" where? ")
    assert request.kind == "query" and request.query == "where?"
    assert _task_rows().count() == 1


def test_query_requests_are_never_coalesced(ai_session, user):
    services.inference_request_create_query(session_id=ai_session.pk, user=user, query="one")
    services.inference_request_create_query(session_id=ai_session.pk, user=user, query="two")
    services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk)
    assert InferenceRequest.objects.count() == 3


def _suggestion(ai_session, user):
    request = services.inference_request_trigger(session_id=ai_session.pk, trigger_seq=1, user_id=user.pk)
    services.inference_request_claim(request_id=request.pk, claim_token="t")
    return services.inference_request_complete(
        request_id=request.pk,
        claim_token="t",
        model_version="m",
        input_size=1,
        drafts=[services.SuggestionDraft(kind="next_action", content={"action": "share"}, score=0.5)],
    )[0]


def test_feedback_is_one_verdict_per_user_and_publishes_an_event(ai_session, user, other_user):
    suggestion = _suggestion(ai_session, user)
    services.suggestion_feedback_submit(suggestion_id=suggestion.pk, user=user, verdict="accept")
    services.suggestion_feedback_submit(suggestion_id=suggestion.pk, user=user, verdict="reject", comment="meh")
    feedback = SuggestionFeedback.objects.get()
    assert feedback.verdict == "reject" and feedback.comment == "meh"
    assert [e.body["data"]["accepted"] for e in _events("suggestion.feedback").order_by("id")] == [True, False]
    with pytest.raises(ValidationFailed):
        services.suggestion_feedback_submit(suggestion_id=suggestion.pk, user=user, verdict="love")
    with pytest.raises(NotFound):
        services.suggestion_feedback_submit(suggestion_id=suggestion.pk, user=other_user, verdict="accept")


def test_model_versions_number_themselves_promote_one_at_a_time_and_roll_back():
    v1 = services.model_version_register(artifact=b"one", metrics={"top3": 0.5}, promote=True)
    v2 = services.model_version_register(artifact=b"two", metrics={"top3": 0.6})
    assert (v1.version, v2.version) == (1, 2) and v2.artifact_bytes == 3
    assert selectors.model_version_promoted_ref()[0] == v1.pk
    services.model_version_promote(model_version_id=v2.pk)
    assert selectors.model_version_promoted_ref() == (v2.pk, "next_action@2")
    assert ModelVersion.objects.filter(promoted=True).count() == 1
    assert selectors.model_version_artifact(model_version_id=v2.pk) == b"two"

    restored = services.model_version_rollback()
    assert restored.pk == v1.pk
    assert selectors.model_version_promoted_ref()[0] == v1.pk
    assert services.model_version_rollback() is None
    assert selectors.model_version_promoted_ref() is None
    with pytest.raises(ValidationFailed):
        services.model_version_register(metrics={})


def test_embeddings_are_stored_once_per_hash():
    vector = np.arange(4, dtype=np.float32)
    h = selectors.embedding_content_hash(text="hello", model_name="m")
    services.embedding_store_many(model_name="m", vectors={h: vector})
    services.embedding_store_many(model_name="m", vectors={h: vector + 1})
    # This hash's rows only: a worker process another test started may still be storing its own.
    assert Embedding.objects.filter(content_hash=h).count() == 1
    np.testing.assert_array_equal(selectors.embedding_get_many(content_hashes=[h, "missing"])[h], vector)
    assert selectors.embedding_content_hash(text="hello", model_name="other") != h
