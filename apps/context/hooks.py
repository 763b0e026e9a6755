"""What the context app tells the live edge after a commit: callbacks installed at startup.

Appended events and participant changes go out to open WebSockets. The
realtime app sits beside this one and reads sessions through it, so it
installs its broadcasts here (``apps/realtime/apps.py``) rather than this app
importing it: the import graph stays acyclic. Unset (a process without the
realtime app), nothing is pushed; clients read the same events by seq over REST.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ContextHooks:
    # events_appended(session_id=, events=[context_event_to_dict(...), ...]): realtime's context_events_broadcast.
    events_appended: Callable[..., None] | None = None
    # session_message(session_id=, message={...}): realtime's session_broadcast (presence frames).
    session_message: Callable[..., None] | None = None
    # access_revoked(user_id=, session_id=, reason=): realtime's session_access_revoke, which
    # closes that user's sockets on that session (session_id None: on every session).
    access_revoked: Callable[..., None] | None = None

    def after_commit_events(self, *, session_id: Any, events: list[dict[str, Any]]) -> None:
        if self.events_appended is not None:
            self.events_appended(session_id=session_id, events=events)

    def after_commit_message(self, *, session_id: Any, message: dict[str, Any]) -> None:
        if self.session_message is not None:
            self.session_message(session_id=session_id, message=message)

    def after_commit_access_revoked(self, *, user_id: Any, session_id: Any, reason: str) -> None:
        if self.access_revoked is not None:
            self.access_revoked(user_id=user_id, session_id=session_id, reason=reason)


hooks = ContextHooks()
