"""Fixtures for apps.ai tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def ai_session(session_factory):
    return session_factory(title="AI session")


@pytest.fixture
def append(user):
    """Append events to a session as ``user`` (or another author) through the context service."""
    from apps.context import services
    from apps.context.services import EventInput

    def do(session, *events: tuple[str, dict], author=None):
        return services.context_event_append(
            session=session, author=author or user, events=[EventInput(event_type=t, data=d) for t, d in events]
        )

    return do
