"""A process that reads and writes through the real selectors/services, driven by JSON lines.

Started by the cross-process tests (``python tests/integration/caching/node.py``
with ``subprocess_env()``); one request per stdin line, one JSON answer per
stdout line. Polling loops run here, inside the process, so the times they
report are not stretched by the pipe.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402

from apps.caching.cache import cache_stats, get_cache  # noqa: E402
from apps.common.exceptions import NotFound  # noqa: E402
from apps.context import selectors, services  # noqa: E402

User = get_user_model()


def _snapshot(session: str, user: str) -> dict[str, Any] | None:
    try:
        found = selectors.session_get_for_user(session_id=session, user=User.objects.get(username=user))
    except NotFound:
        return None
    return selectors.context_snapshot(session=found)


def handle(req: dict[str, Any]) -> dict[str, Any]:
    op = req["op"]
    if op == "ready":
        return {"ready": get_cache().wait_ready(10)}
    if op == "stats":
        return cache_stats()
    if op == "snapshot":
        snap = _snapshot(req["session"], req["user"])
        return {"found": snap is not None, "last_seq": snap and snap["last_seq"], "title": snap and snap["title"]}
    if op == "append":
        actor = User.objects.get(username=req["user"])
        session = selectors.session_get_for_user(session_id=req["session"], user=actor)
        started = time.time()
        stored = services.context_event_append(
            session=session, author=actor, events=[services.EventInput(event_type="context_update", data={"text": "x"})]
        )
        return {"seq": stored[-1].seq, "started": started, "returned": time.time()}
    if op == "remove":
        actor = User.objects.get(username=req["actor"])
        session = selectors.session_get_for_user(session_id=req["session"], user=actor)
        started = time.time()
        services.participant_remove(session=session, actor=actor, username=req["username"])
        return {"started": started, "returned": time.time()}
    if op == "poll_seq":
        # Read until the snapshot shows min_seq; report when, and every value seen on the way.
        deadline = time.monotonic() + req["timeout"]
        seen = []
        while time.monotonic() < deadline:
            snap = _snapshot(req["session"], req["user"])
            seen.append(snap["last_seq"])
            if snap["last_seq"] >= req["min_seq"]:
                return {"seen_at": time.time(), "reads": len(seen), "values": sorted(set(seen))}
            time.sleep(0.0005)
        return {"seen_at": None, "reads": len(seen), "values": sorted(set(seen))}
    if op == "reads_after_delivery":
        # Wait for the bus to deliver an invalidation, then read: no read after
        # delivery may return the old value.
        cache = get_cache()
        deadline = time.monotonic() + req["timeout"]
        while cache.stats()["invalidations"]["received"] < req["received_more_than"]:
            if time.monotonic() > deadline:
                return {"delivered": False}
            time.sleep(0.0005)
        delivered_at = time.time()
        results = [_snapshot(req["session"], req["user"]) is not None for _ in range(req["reads"])]
        return {"delivered": True, "delivered_at": delivered_at, "found": results}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = handle(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            answer = {"error": f"{exc.__class__.__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer, default=str) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
