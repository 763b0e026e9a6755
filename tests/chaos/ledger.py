"""The ledger, in the manner of Jepsen: what clients were told, reconciled with what the platform holds.

Sources, all outside the platform's own bookkeeping:

* client acknowledgements (``workload``: REST and WebSocket appends with their
  seq, accepted canaries);
* a tap queue of the ledger's own bound to every event on ``events``
  (``chaos.tap``): what reached the broker;
* the database (context events, the ``activity`` subscriber's per-session
  counter, canary runs, dead-letter rows);
* the WebSocket frames each listener kept.

Counted per scenario run:

* **lost**: an acknowledged append with no row; a row whose event never
  reached the bus; an event the ``activity`` subscriber did not count; an
  acknowledged seq a listener never got; an ``ok`` canary that did not
  succeed; a ``fail``/``crash`` canary with no dead-letter row.
* **applied twice**: a key with two rows; an event counted twice by
  ``activity``; a seq sent twice on one WebSocket connection; a canary with
  two dead-letter rows.
* **dead-lettered** by reason: every dead-letter row of the run, each matched
  to the canary that failed on purpose; one that matches none is
  **unexplained** (good work dead-lettered), a failure of the run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kombu import Connection, Exchange, Queue

from tests.chaos.stack import ChaosStack
from tests.chaos.workload import CanarySender, Listener, RestAppender, WsAppender

TAP_QUEUE = "chaos.tap"
EXPECTED_REASON = {"fail": "rejected", "crash": "delivery_limit"}
SETTLE_TIMEOUT_S = 120.0


def tap_declare(broker_url: str) -> None:
    with Connection(broker_url) as conn:
        Queue(
            TAP_QUEUE,
            exchange=Exchange("events", type="topic", durable=True, passive=True),
            routing_key="#",
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )(conn.channel()).declare()


class Tap:
    """Every event the broker routed, by session, read off ``chaos.tap`` (kept across scenario runs)."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.by_session: dict[str, list[dict[str, Any]]] = {}

    def drain(self) -> None:
        with Connection(self.broker_url, connect_timeout=10) as conn:
            queue = Queue(TAP_QUEUE, no_declare=True)(conn.channel())
            while (message := queue.get(no_ack=True)) is not None:
                event = json.loads(message.body)
                self.by_session.setdefault(str(event.get("session_id")), []).append(event)

    def events(self, session_id: str) -> list[dict[str, Any]]:
        return self.by_session.get(session_id, [])


@dataclass
class Reckoning:
    operations: Counter = field(default_factory=Counter)
    lost: Counter = field(default_factory=Counter)
    twice: Counter = field(default_factory=Counter)
    dead_lettered: Counter = field(default_factory=Counter)
    unexplained: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settle_s: float = 0.0

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    @property
    def twice_total(self) -> int:
        return sum(self.twice.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "operations": dict(self.operations),
            "lost": dict(self.lost),
            "twice": dict(self.twice),
            "dead_lettered": dict(self.dead_lettered),
            "unexplained": self.unexplained,
            "notes": self.notes,
            "settle_s": round(self.settle_s, 2),
        }


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


def reconcile(
    stack: ChaosStack,
    tap: Tap,
    *,
    session_id: str,
    appenders: list[RestAppender | WsAppender],
    listeners: list[Listener],
    canary: CanarySender,
    since: float,
) -> Reckoning:
    """Wait for the platform to settle (bounded), then count. ``since`` is the epoch second the run began."""
    r = Reckoning()
    t0 = time.monotonic()
    acks = [ack for a in appenders for ack in a.acks]
    top = max((ack.seq for ack in acks), default=0)
    _wait(lambda: _pending_outbox(stack) == 0, SETTLE_TIMEOUT_S)
    _wait(lambda: all(listener.last >= top for listener in listeners), 60)
    _wait(lambda: all(_canary_state(stack, c)[0] for c in canary.accepted), SETTLE_TIMEOUT_S)
    # Last: the tap and the counter are compared as of one settled moment.
    bus = _BusLook(stack, tap, session_id)
    _wait(bus.settled, SETTLE_TIMEOUT_S)
    r.settle_s = time.monotonic() - t0

    r.operations["appends given up"] = sum(len(a.given_up) for a in appenders)
    stored = _count_appends(r, stack, session_id, acks)
    _count_bus(r, bus, stored)
    _count_frames(r, listeners, {ack.seq for ack in acks})
    _count_tasks(r, stack, canary, since)
    return r


def _pending_outbox(stack: ChaosStack) -> int:
    return stack.sql("SELECT count(*) FROM eventbus_outboxmessage WHERE status = 'pending'")[0][0]


class _BusLook:
    """The tap's events of the session and the ``activity`` counter, read together until both stand still."""

    def __init__(self, stack: ChaosStack, tap: Tap, session_id: str) -> None:
        self.stack, self.tap, self.session_id = stack, tap, session_id
        self.events: list[dict[str, Any]] = []
        self.counted = 0
        self._last: tuple[int, int] | None = None

    def settled(self) -> bool:
        """Equal, and neither moved since the last look (suggestions and their events go on for a
        while after the clients stop)."""
        self.tap.drain()
        self.events = self.tap.events(self.session_id)
        rows = self.stack.sql(
            "SELECT events_total FROM eventbus_sessionactivity WHERE session_id = %s", (self.session_id,)
        )
        self.counted = rows[0][0] if rows else 0
        now = (len({e["event_id"] for e in self.events}), self.counted)
        settled = now == self._last and now[0] > 0 and now[0] == now[1]
        self._last = now
        return settled


def _count_appends(r: Reckoning, stack: ChaosStack, session_id: str, acks: list[Any]) -> set[int]:
    """Every acknowledged key has exactly one row, at the seq it was acknowledged with; returns the stored seqs."""
    rows = stack.sql(
        "SELECT data->>'k', count(*), min(seq) FROM context_contextevent WHERE session_id = %s GROUP BY 1",
        (session_id,),
    )
    by_key = {key: (count, seq) for key, count, seq in rows}
    r.operations["appends acknowledged"] = len(acks)
    for ack in acks:
        count, seq = by_key.get(ack.key, (0, None))
        if count == 0:
            r.lost["append"] += 1
            r.notes.append(f"acknowledged append {ack.key} (seq {ack.seq}, {ack.via}) has no row")
        elif seq != ack.seq:
            r.lost["append"] += 1
            r.notes.append(f"append {ack.key} acknowledged as seq {ack.seq}, stored as {seq}")
    for key, (count, _) in by_key.items():
        if count > 1:
            r.twice["append"] += count - 1
            r.notes.append(f"append {key} stored {count} times")
    return {seq for count, seq in by_key.values()}


def _count_bus(r: Reckoning, bus: _BusLook, stored: set[int]) -> None:
    """Every stored event reached the bus (copies are allowed: the bus is at least once), and the
    ``activity`` subscriber counted each distinct event once."""
    distinct = {e["event_id"] for e in bus.events}
    seqs_on_bus = {e["data"].get("seq") for e in bus.events if e["event_type"] == "context.updated"}
    r.operations["events on the bus"] = len(distinct)
    r.operations["bus copies"] = len(bus.events) - len(distinct)
    for seq in sorted(stored - seqs_on_bus):
        r.lost["publish"] += 1
        r.notes.append(f"stored seq {seq} never reached the bus")
    r.operations["events applied"] = bus.counted
    if bus.counted > len(distinct):
        r.twice["apply"] += bus.counted - len(distinct)
    elif bus.counted < len(distinct):
        r.lost["apply"] += len(distinct) - bus.counted


def _count_frames(r: Reckoning, listeners: list[Listener], acked_seqs: set[int]) -> None:
    """Every listener got every acknowledged seq, none twice on one connection."""
    for listener in listeners:
        missing = acked_seqs - set(listener.kept)
        r.lost["frame"] += len(missing)
        if missing:
            r.notes.append(f"{listener.name} missed seqs {sorted(missing)[:10]}")
        r.twice["frame"] += listener.repeated_in_connection
        r.operations["frames kept"] += len(listener.kept)
        r.operations["listener reconnects"] += len(listener.close_codes)


def _count_tasks(r: Reckoning, stack: ChaosStack, canary: CanarySender, since: float) -> None:
    """``ok`` canaries succeeded without a dead letter; ``fail``/``crash`` ones dead-lettered once, for
    their reason; every other dead-letter row of the run is unexplained."""
    explained: set[str] = set()
    for c in canary.accepted:
        _, status, dead = _canary_state(stack, c)
        r.operations[f"canary {c.mode}"] += 1
        explained.update(str(dead_id) for dead_id, _ in dead)
        for _, reason in dead:
            r.dead_lettered[reason] += 1
            if c.mode != "ok" and reason != EXPECTED_REASON[c.mode]:
                r.unexplained.append(f"{c.mode} canary {c.id} dead-lettered for {reason}")
        if c.mode == "ok":
            if status != "succeeded" or dead:
                r.lost["task"] += 1
                r.notes.append(f"ok canary {c.id}: {status}, dead letters {dead}")
        elif not dead:
            r.lost["task"] += 1
            r.notes.append(f"{c.mode} canary {c.id} has no dead-letter row ({status})")
        elif len(dead) > 1:
            r.twice["task"] += len(dead) - 1
    parked = stack.sql("SELECT count(*) FROM eventbus_outboxmessage WHERE status = 'parked'")[0][0]
    if parked:
        r.unexplained.append(f"{parked} outbox rows parked")
    others = stack.sql(
        """
        SELECT d.id, d.queue, d.reason, d.task_name, c.mode
        FROM ops_deadletter d LEFT JOIN ops_canaryrun c ON c.task_id = d.task_id
        WHERE d.created_at >= to_timestamp(%s)
        """,
        (since,),
    )
    for dead_id, queue, reason, task_name, mode in others:
        if str(dead_id) in explained:
            continue
        if EXPECTED_REASON.get(mode) == reason:
            # A canary failing on purpose whose client was not told it was accepted (the
            # answer was lost to the fault): its dead letter is explained all the same.
            r.dead_lettered[reason] += 1
            r.operations[f"canary {mode} (client not told)"] += 1
            continue
        r.unexplained.append(f"{queue} {task_name} {reason}")
        r.dead_lettered[f"unexplained {reason}"] += 1


def _canary_state(stack: ChaosStack, canary: Any) -> tuple[bool, str, list[tuple]]:
    """``(settled, status, dead-letter rows)``: settled once ok succeeded, or fail/crash has its dead letter."""
    status_rows = stack.sql("SELECT status FROM ops_canaryrun WHERE id = %s", (canary.id,))
    status = status_rows[0][0] if status_rows else "missing"
    dead = stack.sql("SELECT id, reason FROM ops_deadletter WHERE task_id = %s", (canary.task_id,))
    settled = status == "succeeded" if canary.mode == "ok" else bool(dead)
    return settled, status, dead
