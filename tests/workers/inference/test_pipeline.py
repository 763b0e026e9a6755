"""The real model behind the batcher, the embedding cache, the suggestion pipeline and hot reload.

These load all-MiniLM-L6-v2 for real (once per test process); only the Celery
transport is absent here (tests/integration/ai runs the real worker).
"""

from __future__ import annotations

import threading

import pytest

from apps.ai import selectors, services
from apps.ai.models import Embedding, InferenceRequest, Suggestion
from tests.workers.inference.conftest import CLOSEST, CONVERSATION, OTHER_SESSION, OTHER_SESSION_TRIGGER
from workers.inference.runtime import PoisonInput

pytestmark = pytest.mark.django_db


def _append_texts(session, user, texts):
    from apps.context import services as context_services
    from apps.context.services import EventInput

    return context_services.context_event_append(
        session=session,
        author=user,
        events=[EventInput(event_type="context_update", data={"text": t}) for t in texts],
    )


def _run(request) -> list[dict]:
    from workers.inference.pipeline import generate_for_request

    outcome = generate_for_request(request_id=str(request.pk), claim_token="test-task")
    assert outcome.status == "done", outcome
    request.refresh_from_db()
    return selectors.inference_request_to_dict(request)["suggestions"]


def test_real_model_batches_and_a_poison_text_fails_alone(real_runtime):
    batcher = real_runtime.batcher
    texts = [f"sentence number {i} about databases" for i in range(7)]
    futures = (
        [batcher.submit(t) for t in texts[:3]]
        + [batcher.submit("bad \ud800 text")]
        + [batcher.submit(t) for t in texts[3:]]
    )
    results = []
    for future in futures:
        try:
            results.append(future.result(timeout=60))
        except PoisonInput as exc:
            results.append(exc)
    assert isinstance(results[3], PoisonInput)
    good = [r for i, r in enumerate(results) if i != 3]
    assert all(r.shape == (real_runtime.encoder.dim,) for r in good)
    assert all(abs(float((r * r).sum()) - 1.0) < 1e-3 for r in good)


def test_a_text_is_embedded_once_then_served_from_memory_or_postgres(real_runtime, fresh_caches):
    from workers.inference import embeddings

    before = dict(embeddings.counters)
    first = embeddings.embed_texts(["the cache should remember this sentence"])
    assert embeddings.counters["model"] == before["model"] + 1
    assert Embedding.objects.count() == 1
    again = embeddings.embed_texts(["  the cache should remember this sentence  "])
    assert embeddings.counters["l1"] == before["l1"] + 1
    embeddings.cache_clear()
    from_db = embeddings.embed_texts(["the cache should remember this sentence"])
    assert embeddings.counters["db"] == before["db"] + 1
    assert embeddings.counters["model"] == before["model"] + 1
    assert (first[0] == again[0]).all() and abs(float(first[0] @ from_db[0]) - 1.0) < 1e-5


def test_concurrent_requests_for_one_new_text_embed_it_once(real_runtime, fresh_caches):
    from workers.inference import embeddings

    before = embeddings.counters["model"]
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def call() -> None:
        from django.db import connection

        try:
            barrier.wait()
            embeddings.embed_texts(["one sentence wanted by six threads at once"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    # Single-flight: one forward pass; other threads found it in flight, in L1 or in PostgreSQL.
    assert embeddings.counters["model"] - before == 1


@pytest.mark.parametrize("trigger,expected_seq", sorted(CLOSEST.items()))
def test_related_context_points_at_the_closest_earlier_event(
    real_runtime, fresh_caches, session_factory, user, trigger, expected_seq
):
    # Given a session with the hand-written conversation and a new update about one of its topics
    session = session_factory()
    _append_texts(session, user, CONVERSATION)
    [event] = _append_texts(session, user, [trigger])
    request = services.inference_request_trigger(session_id=session.pk, trigger_seq=event.seq, user_id=user.pk)

    # When the pipeline runs
    suggestions = _run(request)

    # Then the best related-context suggestion is the event a person would pick
    related = sorted((s for s in suggestions if s["kind"] == "related_context"), key=lambda s: -s["score"])
    assert related, suggestions
    assert related[0]["source_seqs"] == [expected_seq]
    assert related[0]["content"]["same_session"] is True
    assert related[0]["content"]["text"] == CONVERSATION[expected_seq - 1]
    assert all(s["source_seqs"] != [event.seq] for s in related)  # never the trigger itself
    assert related[0]["model_version"] == real_runtime.model_name


def test_related_context_never_reaches_the_users_other_sessions(real_runtime, fresh_caches, session_factory, user):
    # Given the user's other session holds the best match for the trigger
    other = session_factory(title="Office notes")
    _append_texts(other, user, OTHER_SESSION)
    session = session_factory()
    _append_texts(session, user, CONVERSATION)
    [event] = _append_texts(session, user, [OTHER_SESSION_TRIGGER])
    request = services.inference_request_trigger(session_id=session.pk, trigger_seq=event.seq, user_id=user.pk)

    # When the request runs
    related = [s for s in _run(request) if s["kind"] == "related_context"]

    # Then every suggestion comes from this session (tenant isolation)
    other_texts = set(OTHER_SESSION)
    assert all(s["content"]["session_id"] == str(session.pk) for s in related), related
    assert all(s["content"]["same_session"] is True for s in related)
    assert not {s["content"]["text"] for s in related} & other_texts


def test_query_answers_from_the_session(real_runtime, fresh_caches, session_factory, user):
    session = session_factory()
    _append_texts(session, user, CONVERSATION)
    request = services.inference_request_create_query(
        session_id=session.pk, user=user, query="who is arranging the dinner?"
    )
    suggestions = _run(request)
    assert suggestions and {s["kind"] for s in suggestions} == {"query"}
    assert max(suggestions, key=lambda s: s["score"])["source_seqs"] == [3]


def test_next_action_uses_the_baseline_then_a_promoted_model_then_the_rollback(
    real_runtime, fresh_caches, session_factory, user
):
    from apps.context import services as context_services
    from apps.context.services import EventInput
    from workers.inference.next_action import save_artifact, train_model

    session = session_factory()
    actions = ["search", "open_doc", "edit", "save", "search", "open_doc", "edit"]
    context_services.context_event_append(
        session=session,
        author=user,
        events=[EventInput(event_type="user_action", data={"action": a}) for a in actions],
    )
    [event] = _append_texts(session, user, ["let us keep editing"])

    def run() -> list[dict]:
        request = services.inference_request_trigger(session_id=session.pk, trigger_seq=event.seq, user_id=user.pk)
        return [s for s in _run(request) if s["kind"] == "next_action"]

    # No promoted version: the frequency baseline answers ("edit" was followed by "save")
    baseline = run()
    assert baseline[0]["content"] == {"action": "save", "after": "edit"}
    assert baseline[0]["model_version"] == "next_action-baseline"
    assert baseline[0]["source_seqs"] == [5, 6, 7]

    # A promoted version is used by the very next request, without a restart
    model, vocab = train_model([actions * 3], epochs=1)
    v1 = services.model_version_register(artifact=save_artifact(model, vocab), metrics={}, promote=True)
    assert {s["model_version"] for s in run()} == {"next_action@1"}
    v2 = services.model_version_register(artifact=save_artifact(model, vocab), metrics={}, promote=True)
    assert {s["model_version"] for s in run()} == {"next_action@2"}

    # Rolled back in admin: the previous version again
    services.model_version_rollback()
    assert {s["model_version"] for s in run()} == {v1.label}
    assert v2.label == "next_action@2"


def test_a_corrupt_promoted_artifact_falls_back_to_the_baseline(real_runtime, fresh_caches):
    from workers.inference.predictors import BASELINE_LABEL, PredictorHolder

    services.model_version_register(artifact=b"garbage", metrics={}, promote=True)
    predictor, label = PredictorHolder().current()
    assert label == BASELINE_LABEL
    assert predictor.predict(["x"], 1) == []


def test_a_second_delivery_of_a_done_request_adds_nothing(real_runtime, fresh_caches, session_factory, user):
    from workers.inference.pipeline import generate_for_request

    session = session_factory()
    [event] = _append_texts(session, user, CONVERSATION[:1])
    request = services.inference_request_trigger(session_id=session.pk, trigger_seq=event.seq, user_id=user.pk)
    _run(request)
    count = Suggestion.objects.count()
    assert generate_for_request(request_id=str(request.pk), claim_token="another-delivery").status == "skipped"
    assert generate_for_request(request_id=str(request.pk), claim_token="test-task").status == "skipped"
    assert Suggestion.objects.count() == count
    assert InferenceRequest.objects.get().status == "done"


def _auto_request(session, user, *, actions=("open_doc", "edit", "save")):
    from apps.context import services as context_services
    from apps.context.services import EventInput

    _append_texts(session, user, CONVERSATION)
    context_services.context_event_append(
        session=session, author=user, events=[EventInput("user_action", {"action": a}) for a in actions]
    )
    [event] = _append_texts(session, user, ["What is the plan for moving our invoices data into Postgres?"])
    return services.inference_request_trigger(session_id=session.pk, trigger_seq=event.seq, user_id=user.pk)


def _processing_event(request) -> dict:
    from apps.eventbus.models import OutboxMessage

    rows = OutboxMessage.objects.filter(kind=OutboxMessage.Kind.EVENT, routing_key="ai.processing")
    done = [m.body["data"] for m in rows if m.body["data"]["inference_request_id"] == str(request.pk)]
    return done[-1]


def test_every_suggestion_says_why_in_the_api_and_on_the_frame(
    real_runtime, fresh_caches, session_factory, user, api_client, monkeypatch, django_capture_on_commit_callbacks
):
    from apps.ai import push

    frames: list[dict] = []
    monkeypatch.setattr(push, "broadcast_many", lambda *, session_id, messages: frames.extend(messages))
    session = session_factory()
    request = _auto_request(session, user)

    # When the pipeline runs and its transaction commits
    with django_capture_on_commit_callbacks(execute=True):
        _run(request)

    # Then each stored suggestion carries its explanation
    stored = list(Suggestion.objects.filter(request=request))
    assert {s.kind for s in stored} == {"related_context", "next_action"}
    related = min((s for s in stored if s.kind == "related_context"), key=lambda s: s.rank)
    assert related.source_seqs == [1]  # the billing database migration
    assert related.explanation["method"] == "hybrid"
    assert isinstance(related.explanation["matched_terms"], list)
    assert related.explanation["dense"] >= 0.2 and related.explanation["score"] == related.score
    action = next(s for s in stored if s.kind == "next_action")
    assert action.explanation["method"] == "next_action" and action.explanation["after_actions"] == [
        "open_doc",
        "edit",
        "save",
    ]
    assert 0 <= action.explanation["probability"] <= 1

    # And the REST list shows it
    body = api_client.get(f"/api/v1/sessions/{session.pk}/suggestions/").json()["results"]
    by_id = {r["id"]: r for r in body}
    assert by_id[str(related.pk)]["explanation"] == related.explanation
    assert by_id[str(action.pk)]["explanation"] == action.explanation

    # And so does every WebSocket frame's payload
    assert len(frames) == len(stored)
    assert all(f["type"] == "suggestion" and f["explanation"] for f in frames)
    assert next(f for f in frames if f["id"] == str(related.pk))["explanation"] == related.explanation


@pytest.mark.parametrize(
    "kinds,expected",
    [
        (["next_action"], {"next_action"}),
        (["related_context"], {"related_context"}),
        ([], {"related_context", "next_action"}),
    ],
)
def test_the_authors_suggestion_kinds_preference_is_honoured(
    real_runtime, fresh_caches, session_factory, user, kinds, expected
):
    from apps.context import services as context_services

    # Given the author wants only some kinds (empty: all)
    context_services.preferences_update(user=user, suggestion_kinds=kinds)
    session = session_factory()
    request = _auto_request(session, user)

    # When the pipeline runs
    suggestions = _run(request)

    # Then only those kinds are made, and ai.processing says which were asked for
    assert {s["kind"] for s in suggestions} == expected
    assert _processing_event(request)["suggestion_kinds"] == (sorted(kinds) if kinds else None)


def test_ai_processing_reports_the_path_the_run_took(real_runtime, fresh_caches, session_factory, user, settings):
    from workers.inference.pipeline import generate_for_request

    session = session_factory()

    # A first run off ai.realtime, with the configured ranking
    first = _auto_request(session, user)
    _run(first)
    event = _processing_event(first)
    assert event["processing_type"] == "realtime" and event["retrieval_method"] == "hybrid"

    # An operator's replay of a failed request, ranked the plain way
    settings.AI_RETRIEVAL_METHOD = "dense"
    second = services.inference_request_trigger(session_id=session.pk, trigger_seq=first.trigger_seq, user_id=user.pk)
    InferenceRequest.objects.filter(pk=second.pk).update(status=InferenceRequest.Status.FAILED)
    assert generate_for_request(request_id=str(second.pk), claim_token="replay-task", replay=True).status == "done"
    event = _processing_event(second)
    assert event["processing_type"] == "replay" and event["retrieval_method"] == "dense"
    related = Suggestion.objects.filter(request=second, kind="related_context").first()
    assert related is not None and related.explanation["method"] == "dense"

    # A redelivery of a request claimed before (its worker died): a retry
    third = services.inference_request_trigger(session_id=session.pk, trigger_seq=first.trigger_seq, user_id=user.pk)
    InferenceRequest.objects.filter(pk=third.pk).update(attempts=1)
    _run(third)
    assert _processing_event(third)["processing_type"] == "retry"


def test_a_question_is_answered_whatever_the_askers_kinds(real_runtime, fresh_caches, session_factory, user):
    from apps.context import services as context_services

    # Given an asker who turned off everything but next actions
    context_services.preferences_update(user=user, suggestion_kinds=["next_action"])
    session = session_factory()
    _append_texts(session, user, CONVERSATION)

    # When they ask an explicit question
    request = services.inference_request_create_query(
        session_id=session.pk, user=user, query="Who is organising the restaurant for the team's evening meal?"
    )
    suggestions = _run(request)

    # Then it is answered: a question is its own request for that kind
    assert suggestions and {s["kind"] for s in suggestions} == {"query"}
    assert suggestions[0]["source_seqs"] == [3]
    assert _processing_event(request)["suggestion_kinds"] is None


def test_the_ranking_reads_each_candidates_author_and_the_trigger_authors(
    real_runtime, fresh_caches, session_factory, user, other_user, monkeypatch
):
    import dataclasses

    from apps.context import services as context_services
    from workers.inference import retrieval

    # Given alice wrote the conversation's odd events and bob the others, and bob the trigger
    session = session_factory()
    context_services.participant_add(session=session, actor=user, username=other_user.username, role="editor")
    for i, text in enumerate(CONVERSATION):
        _append_texts(session, user if i % 2 == 0 else other_user, [text])
    trigger = sorted(CLOSEST)[0]
    [event] = _append_texts(session, other_user, [trigger])
    # and the author feature weighs something (its tuned weight may be 0)
    calls: list[dict] = []
    original = retrieval.rank_related

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**{**kwargs, "params": dataclasses.replace(retrieval.HYBRID, author_weight=0.01)})

    monkeypatch.setattr(retrieval, "rank_related", spy)
    request = services.inference_request_trigger(session_id=session.pk, trigger_seq=event.seq, user_id=user.pk)

    # When the pipeline runs
    suggestions = _run(request)

    # Then the ranking got the trigger event's author (not the request's) and each candidate's
    [call] = calls
    assert call["query_author_id"] == other_user.pk
    assert {c["seq"]: c["author_id"] for c in call["candidates"]} == {
        i + 1: (user.pk if i % 2 == 0 else other_user.pk) for i in range(len(CONVERSATION))
    }
    # And each stored explanation says whether the author matched, and what that added when it did
    related = [s for s in suggestions if s["kind"] == "related_context"]
    assert related
    for suggestion in related:
        explanation = suggestion["explanation"]
        same = explanation["same_author"]
        assert same == (suggestion["source_seqs"][0] % 2 == 0)
        assert explanation.get("author_contribution") == (0.01 if same else None)
    # And content carries no author id (the explanation says only whether it matched)
    assert all("author_id" not in s["content"] for s in related)
