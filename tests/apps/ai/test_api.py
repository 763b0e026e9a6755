"""REST: suggestions list and request, inference request status, feedback; bad input is a clear 4xx."""

from __future__ import annotations

import uuid

import pytest

from apps.ai import services
from apps.ai.models import InferenceRequest, SuggestionFeedback

pytestmark = pytest.mark.django_db


def _done_request(session, user, *drafts):
    request = services.inference_request_trigger(session_id=session.pk, trigger_seq=1, user_id=user.pk)
    services.inference_request_claim(request_id=request.pk, claim_token="t")
    services.inference_request_complete(
        request_id=request.pk, claim_token="t", drafts=list(drafts), model_version="m", input_size=1
    )
    request.refresh_from_db()
    return request


def test_post_query_answers_202_with_the_request_id(api_client, ai_session):
    response = api_client.post(
        f"/api/v1/sessions/{ai_session.pk}/suggestions/", {"query": "what was decided?"}, format="json"
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending" and body["kind"] == "query" and body["query"] == "what was decided?"
    assert InferenceRequest.objects.filter(pk=body["id"]).exists()

    status = api_client.get(f"/api/v1/inference-requests/{body['id']}/")
    assert status.status_code == 200
    assert status.json()["status"] == "pending" and status.json()["suggestions"] == []
    assert status.json()["query"] == "what was decided?"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"query": ""},
        {"query": "   "},
        {"query": "x" * 2001},
        {"query": 5},
        {"query": "ok", "extra": 1},
        ["q"],
        {"query": None},
    ],
)
def test_bad_query_bodies_are_400_and_write_nothing(api_client, ai_session, payload):
    response = api_client.post(f"/api/v1/sessions/{ai_session.pk}/suggestions/", payload, format="json")
    assert response.status_code == 400, response.content
    assert set(response.json()) == {"code", "message", "details"}
    assert InferenceRequest.objects.count() == 0


def test_malformed_json_is_400(api_client, ai_session):
    response = api_client.generic(
        "POST", f"/api/v1/sessions/{ai_session.pk}/suggestions/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_request"


def test_outsiders_get_404_everywhere(api_client_for, other_user, ai_session, user):
    request = _done_request(ai_session, user, services.SuggestionDraft(kind="next_action", content={}, score=0.1))
    suggestion = request.suggestions.get()
    client = api_client_for(other_user)
    assert client.get(f"/api/v1/sessions/{ai_session.pk}/suggestions/").status_code == 404
    posted = client.post(f"/api/v1/sessions/{ai_session.pk}/suggestions/", {"query": "x"}, format="json")
    assert posted.status_code == 404
    assert client.get(f"/api/v1/inference-requests/{request.pk}/").status_code == 404
    response = client.post(f"/api/v1/suggestions/{suggestion.pk}/feedback/", {"verdict": "accept"}, format="json")
    assert response.status_code == 404
    assert client.get(f"/api/v1/inference-requests/{uuid.uuid4()}/").status_code == 404


def test_unauthenticated_is_401(client, ai_session):
    assert client.get(f"/api/v1/sessions/{ai_session.pk}/suggestions/").status_code == 401


def test_list_is_newest_first_and_filterable_by_kind(api_client, ai_session, user):
    first = _done_request(
        ai_session, user, services.SuggestionDraft(kind="next_action", content={"action": "a"}, score=0.2)
    )
    second = _done_request(
        ai_session,
        user,
        services.SuggestionDraft(kind="related_context", content={"seq": 1}, score=0.7, source_seqs=[1]),
    )
    response = api_client.get(f"/api/v1/sessions/{ai_session.pk}/suggestions/")
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == [str(second.suggestions.get().pk), str(first.suggestions.get().pk)]
    assert results[0]["source_seqs"] == [1] and results[0]["kind"] == "related_context"
    only = api_client.get(f"/api/v1/sessions/{ai_session.pk}/suggestions/?kind=next_action").json()["results"]
    assert [r["kind"] for r in only] == ["next_action"]
    assert api_client.get(f"/api/v1/sessions/{ai_session.pk}/suggestions/?kind=bogus").status_code == 400


def test_done_request_shows_its_suggestions(api_client, ai_session, user):
    request = _done_request(
        ai_session,
        user,
        services.SuggestionDraft(kind="next_action", content={"action": "a"}, score=0.2, source_seqs=[1]),
    )
    body = api_client.get(f"/api/v1/inference-requests/{request.pk}/").json()
    assert body["status"] == "done"
    assert body["suggestions"][0]["content"] == {"action": "a"}
    assert "query" not in body


def test_feedback_accept_then_reject(api_client, ai_session, user):
    request = _done_request(ai_session, user, services.SuggestionDraft(kind="next_action", content={}, score=0.1))
    sid = request.suggestions.get().pk
    url = f"/api/v1/suggestions/{sid}/feedback/"
    assert api_client.post(url, {"verdict": "accept"}, format="json").status_code == 201
    response = api_client.post(url, {"verdict": "reject", "comment": "not now"}, format="json")
    assert response.status_code == 201
    assert response.json() == {"suggestion_id": str(sid), "verdict": "reject", "comment": "not now"}
    assert SuggestionFeedback.objects.get().verdict == "reject"
    for bad in ({"verdict": "maybe"}, {}, {"verdict": "accept", "comment": "x" * 2001}, {"verdict": "accept", "x": 1}):
        assert api_client.post(url, bad, format="json").status_code == 400
    assert (
        api_client.post(
            f"/api/v1/suggestions/{uuid.uuid4()}/feedback/", {"verdict": "accept"}, format="json"
        ).status_code
        == 404
    )
