"""Fault scenarios over one running stack, each landing while work is in flight, and the run that reckons them.

A run: a fresh session; two listeners follow it; two REST appenders and one
WebSocket appender write to it; a canary sender sends ``ok``, ``fail`` and
``crash`` tasks. Once work is flowing the fault lands (what was in flight at
that moment is recorded: queue figures and pending outbox rows); the workload
goes on for ``AFTER_FAULT_S``, stops, every killed process is started again,
and the ledger reckons the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.chaos.ledger import Reckoning, Tap, reconcile
from tests.chaos.stack import ChaosStack
from tests.chaos.workload import CanarySender, Listener, RestAppender, WsAppender, stop_all

BEFORE_FAULT_ACKS = 15  # appends acknowledged before the fault lands: work is flowing
AFTER_FAULT_S = 4.0


def _kill(name: str) -> Callable[[ChaosStack], None]:
    def fault(stack: ChaosStack) -> None:
        proc = stack.procs[name]
        proc.kill()
        time.sleep(0.5)  # dead for a moment, as before an orchestrator's restart
        proc.start()

    return fault


def _kill_web(stack: ChaosStack) -> None:
    """SIGKILL the web instance holding the most connections; HAProxy retries the idempotent requests elsewhere."""
    assert stack.haproxy is not None
    sessions = stack.haproxy.server_sessions()
    web = max(stack.webs, key=lambda w: sessions.get(w.name, 0))
    assert web.process is not None
    web.process.kill()
    web.process.wait(timeout=10)
    web.start(timeout=120)


def _restart(service: str, down_for: float) -> Callable[[ChaosStack], None]:
    def fault(stack: ChaosStack) -> None:
        getattr(stack, service).restart(down_for=down_for)

    return fault


def _partition(proxy: str, hold: float) -> Callable[[ChaosStack], None]:
    """Black-hole every open connection through the proxy (peers neither close nor answer) for ``hold`` seconds
    of workload; new connections pass, so the platform recovers by noticing and reconnecting."""

    def fault(stack: ChaosStack) -> None:
        getattr(stack, proxy).blackhole()
        time.sleep(hold)

    return fault


def _delete_one_event(stack: ChaosStack) -> None:
    """No fault: the ledger's self-check deletes one committed event behind the platform's back (see ``after``)."""


@dataclass
class Scenario:
    name: str
    fault: Callable[[ChaosStack], None]
    what: str
    expect_lost: int = 0
    after: Callable[[ChaosStack, str, list[Any]], None] | None = None


def _behind_the_back(stack: ChaosStack, session_id: str, appenders: list[Any]) -> None:
    key = appenders[0].acks[0].key
    stack.sql("DELETE FROM context_contextevent WHERE session_id = %s AND data->>'k' = %s", (session_id, key))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("kill-web", _kill_web, "SIGKILL of the busiest web instance"),
        Scenario("kill-relay", _kill("relay1"), "SIGKILL of one of two outbox relays"),
        Scenario("kill-subscribers", _kill("subscribers"), "SIGKILL of the subscriber runner"),
        Scenario("kill-archiver", _kill("archiver"), "SIGKILL of the dead-letter archiver"),
        Scenario("kill-realtime-worker", _kill("worker-realtime"), "SIGKILL of the realtime worker"),
        Scenario("kill-batch-worker", _kill("worker-batch"), "SIGKILL of the batch worker (canaries in flight)"),
        Scenario("kill-beat", _kill("beat"), "SIGKILL of beat"),
        Scenario("restart-rabbitmq", _restart("rabbit", 1.0), "RabbitMQ stopped and started"),
        Scenario("restart-redis", _restart("redis", 1.0), "Redis stopped (its data lost) and started"),
        Scenario("restart-postgres", _restart("pg", 1.0), "PostgreSQL stopped (fast) and started"),
        Scenario("partition-web-redis", _partition("redis_proxy", 3.0), "web to Redis black-holed"),
        Scenario("partition-workers-rabbitmq", _partition("rabbit_proxy", 3.0), "workers to RabbitMQ black-holed"),
        Scenario(
            "ledger-self-check",
            _delete_one_event,
            "one committed event deleted behind the platform's back: the ledger must see it",
            expect_lost=1,
            after=_behind_the_back,
        ),
    ]
}

SHORT_PROFILE = ("kill-web", "ledger-self-check")
# Scenarios make test-chaos (CI) leaves out, each with the defect that keeps it from passing
# every time; bench/chaos.py runs them all and bench/results/chaos.md shows how they fare.
CI_LEAVES_OUT = {
    "partition-workers-rabbitmq": (
        "1 of 3 runs: after the black hole a worker reconnected and still took no task for 120 s"
        " (workers/deadletter/watchdog.py fixed the rest; this one is open)"
    ),
}


@dataclass
class RunResult:
    scenario: str
    repetition: int
    reckoning: Reckoning
    in_flight: dict[str, Any] = field(default_factory=dict)
    fault_s: float = 0.0
    max_ack_gap_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        expected = SCENARIOS[self.scenario].expect_lost
        r = self.reckoning
        return (
            not self.errors
            and r.lost_total == expected
            and r.twice_total == 0
            and not r.unexplained
            and r.operations["appends acknowledged"] > BEFORE_FAULT_ACKS
        )

    def summary(self) -> str:
        r = self.reckoning
        return (
            f"{self.scenario}#{self.repetition}: ops={dict(r.operations)} lost={dict(r.lost)} twice={dict(r.twice)}"
            f" dead={dict(r.dead_lettered)} unexplained={r.unexplained} in_flight={self.in_flight}"
            f" statuses={self.statuses} errors={self.errors} notes={r.notes[:5]}"
            f" fault_s={self.fault_s:.1f} gap={self.max_ack_gap_s:.1f}"
            f" settle={r.settle_s:.1f}"
        )


def _session_create(stack: ChaosStack) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.post(
                f"{stack.url}/api/v1/sessions/",
                json={"title": "chaos"},
                headers={"Authorization": f"Token {stack.owner_token}"},
                timeout=10,
            )
            if response.status_code == 201:
                return str(response.json()["id"])
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("could not create a session")
        time.sleep(0.5)


def _in_flight(stack: ChaosStack) -> dict[str, Any]:
    figures = stack.queue_figures()
    busy = {q: f for q, f in figures.items() if (f[0] or f[1]) and not q.startswith("chaos.")}
    pending = stack.sql("SELECT count(*) FROM eventbus_outboxmessage WHERE status = 'pending'")[0][0]
    return {"unacked": sum(f[0] for f in busy.values()), "ready": sum(f[1] for f in busy.values()), "outbox": pending}


def _max_gap(appenders: list[RestAppender], since: float) -> float:
    times = sorted(ack.at for a in appenders for ack in a.acks if ack.at >= since)
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def scenario_run(stack: ChaosStack, tap: Tap, name: str, repetition: int) -> RunResult:
    scenario = SCENARIOS[name]
    since = time.time() - 1
    session_id = _session_create(stack)
    ws_base = stack.url.replace("http://", "ws://") + f"/ws/sessions/{session_id}/?token={stack.owner_token}"
    listeners = [Listener(ws_url=ws_base, name=f"listener{i}") for i in (1, 2)]
    for listener in listeners:
        listener.start()
    for listener in listeners:
        listener.connected.wait(30)
    appenders: list[Any] = [
        RestAppender(url=stack.url, token=stack.owner_token, session_id=session_id, name=f"rest{i}") for i in (1, 2)
    ]
    appenders.append(WsAppender(ws_url=ws_base, name="ws1"))
    canary = CanarySender(url=stack.url, token=stack.operator_token)
    workers = [*listeners, *appenders, canary]
    for worker in [*appenders, canary]:
        worker.start()
    deadline = time.monotonic() + 60
    while sum(len(a.acks) for a in appenders) < BEFORE_FAULT_ACKS and time.monotonic() < deadline:
        time.sleep(0.1)
    result = RunResult(scenario=name, repetition=repetition, reckoning=Reckoning())
    result.in_flight = _in_flight(stack)
    fault_at = time.monotonic()
    scenario.fault(stack)
    result.fault_s = time.monotonic() - fault_at
    time.sleep(AFTER_FAULT_S)
    stop_all([*appenders, canary])
    stack.revive_all()
    result.max_ack_gap_s = _max_gap([a for a in appenders if isinstance(a, RestAppender)], fault_at - 1)
    if scenario.after is not None:
        scenario.after(stack, session_id, appenders)
    result.reckoning = reconcile(
        stack, tap, session_id=session_id, appenders=appenders, listeners=listeners, canary=canary, since=since
    )
    stop_all(listeners)
    for appender in appenders:
        for status, count in getattr(appender, "statuses", {}).items():
            result.statuses[status] = result.statuses.get(status, 0) + count
    result.errors = [f"{w.name}: {w.error!r}" for w in workers if w.error is not None]
    result.errors += [f"{a.name} gave up on {len(a.given_up)} appends" for a in appenders if a.given_up]
    return result
