"""The AI app's live pushes: suggestion frames and the session's AI presence state.

Both are best effort and run after commit, through the realtime app's announced
interface: a failure is logged, never raised into already-committed work
(clients resync from REST).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from apps.realtime.broadcast import channel_layer_send_sync, presence_set_ai_state, session_broadcast_async

logger = logging.getLogger(__name__)


def broadcast_many(*, session_id: Any, messages: list[dict[str, Any]]) -> None:
    """Several frames in one hop to the process's channel-layer send loop (one Redis connection)."""
    if not messages:
        return

    async def send_all() -> None:
        for message in messages:
            await session_broadcast_async(session_id=session_id, message=message)

    try:
        channel_layer_send_sync(send_all)
    except Exception:  # the live push is best effort; clients read the REST list
        logger.warning("suggestion broadcast failed", exc_info=True, extra={"session_id": str(session_id)})


# Presence changes run on one background thread: they are advisory, cost a
# Redis write plus a channel-layer send (tens of ms on a loaded box), and must
# not sit on the path from claim to suggestion. One thread keeps them in order
# (queued -> generating -> None).
_presence_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ai-presence")


def _presence_ai_state_now(*, session_id: Any, state: str | None) -> None:
    try:
        presence_set_ai_state(session_id=session_id, state=state)
    except Exception:  # presence is advisory
        logger.warning("presence_set_ai_state failed", exc_info=True, extra={"session_id": str(session_id)})


def presence_ai_state(*, session_id: Any, state: str | None) -> None:
    """Set the session's AI state (``queued``, ``generating``, None) on the presence thread."""
    _presence_executor.submit(_presence_ai_state_now, session_id=session_id, state=state)
