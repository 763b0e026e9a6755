from __future__ import annotations

from collections.abc import Callable

import pytest

from apps.context import services


@pytest.fixture
def roles(make_user, user, api_client_for) -> Callable[..., dict]:
    """A session owned by alice with an editor, a viewer and an outsider, each with a client."""

    def factory(title: str = "Design review") -> dict:
        session = services.session_create(owner=user, title=title)
        people = {"owner": user}
        for role in ("editor", "viewer"):
            person = make_user(f"{role}_{session.pk.hex[:6]}")
            services.participant_add(session=session, actor=user, username=person.username, role=role)
            people[role] = person
        people["outsider"] = make_user(f"outsider_{session.pk.hex[:6]}")
        return {
            "session": session,
            "users": people,
            "clients": {name: api_client_for(person) for name, person in people.items()},
        }

    return factory


def url(session, suffix: str = "") -> str:
    return f"/api/v1/sessions/{session.pk}/{suffix}"
