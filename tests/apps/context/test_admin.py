"""Admin pages for every context model render, filter and search."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.context import services
from apps.context.models import ContextEvent, IdempotencyKey
from apps.context.services import EventInput

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def populated(session_factory, user, other_user):
    session = session_factory(title="Quarterly plan")
    services.participant_add(session=session, actor=user, username=other_user.username, role="viewer")
    services.context_event_append(
        session=session, author=user, events=[EventInput("note", {"text": f"n{i}"}, f"c{i}") for i in range(3)]
    )
    services.preferences_update(user=user, ai_enabled=False)
    IdempotencyKey.objects.create(user=user, key="k", scope="POST /x/", request_hash="h")
    return session


@pytest.mark.parametrize(
    "path",
    [
        "/admin/context/session/",
        "/admin/context/session/?state__exact=open&q=Quarterly",
        "/admin/context/participant/?role__exact=viewer&q=bob",
        "/admin/context/contextevent/?event_type__exact=note&q=c1",
        "/admin/context/userpreference/?ai_enabled__exact=0",
        "/admin/context/idempotencykey/?status__exact=in_progress&q=k",
    ],
)
def test_changelists_filter_and_search(admin_client, populated, path):
    response = admin_client.get(path)
    assert response.status_code == 200


def test_session_page_shows_participants_and_read_only_events(admin_client, populated):
    response = admin_client.get(f"/admin/context/session/{populated.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Participants" in html or "participants" in html
    for i in range(3):
        assert f"c{i}" in html  # each event's client_msg_id, shown read-only
    assert 'name="events-0-seq"' not in html  # seq is never an input


def test_events_cannot_be_added_or_edited_in_admin(admin_client, populated):
    event = ContextEvent.objects.filter(session=populated).first()
    assert admin_client.get("/admin/context/contextevent/add/").status_code == 403
    page = admin_client.get(f"/admin/context/contextevent/{event.pk}/change/")
    assert page.status_code == 200 and 'name="seq"' not in page.content.decode()
