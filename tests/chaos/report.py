"""One table of chaos runs: scenario x operations, lost, applied twice, dead-lettered by reason, recovery."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from tests.chaos.scenarios import SCENARIOS, RunResult


def chaos_table(results: Sequence[RunResult]) -> list[str]:
    """Markdown rows, one per scenario, its repetitions summed (recovery: the worst repetition)."""
    lines = [
        "| scenario | runs | passed | appends acked | frames | canaries | lost | applied twice "
        "| dead-lettered by reason | in flight at the fault (unacked / ready / outbox) "
        "| longest append gap s | settled after s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(dict.fromkeys(r.scenario for r in results))
    for name in order:
        runs = [r for r in results if r.scenario == name]
        ops: Counter = Counter()
        dead: Counter = Counter()
        for r in runs:
            ops.update(r.reckoning.operations)
            dead.update(r.reckoning.dead_lettered)
        canaries = sum(v for k, v in ops.items() if k.startswith("canary"))
        flight = " ; ".join(
            f"{r.in_flight.get('unacked', 0)}/{r.in_flight.get('ready', 0)}/{r.in_flight.get('outbox', 0)}"
            for r in runs
        )
        expected = SCENARIOS[name].expect_lost
        lost = sum(r.reckoning.lost_total for r in runs)
        lines.append(
            f"| {name} | {len(runs)} | {sum(r.passed for r in runs)} | {ops['appends acknowledged']} "
            f"| {ops['frames kept']} | {canaries} | {lost}{f' (expected {expected * len(runs)})' if expected else ''} "
            f"| {sum(r.reckoning.twice_total for r in runs)} "
            f"| {', '.join(f'{k} {v}' for k, v in sorted(dead.items())) or '-'} | {flight} "
            f"| {max(r.max_ack_gap_s for r in runs):.1f} | {max(r.reckoning.settle_s for r in runs):.1f} |"
        )
    return lines


def chaos_markdown(results: Sequence[RunResult], *, command: str, total_s: float, cpu: str) -> str:
    """``bench/results/chaos.md``: how it was run, the table, the scenarios, and every failed run."""
    failed = [r for r in results if not r.passed]
    names = list(dict.fromkeys(r.scenario for r in results))
    lines = [
        "# Chaos: nothing lost, nothing applied twice",
        "",
        f"`{command}` on {cpu}, {time.strftime('%Y-%m-%d')}: {len(results)} runs in {total_s / 60:.1f} min,"
        f" {len(failed)} failed.",
        "",
        "Each run: a fresh session, 2 REST appenders (Idempotency-Key, retried until acknowledged), 1 WebSocket",
        "appender (client_msg_id), 2 listeners resuming on the handshake, canaries in ok/fail/crash modes; the",
        "fault lands once 15 appends are acknowledged, the workload goes on 4 s, then the ledger reckons it",
        "(tests/chaos/ledger.py). In flight: messages unacknowledged / ready in RabbitMQ and outbox rows pending",
        "at the moment of the fault.",
        "",
        *chaos_table(results),
        "",
        "Scenarios: " + "; ".join(f"`{s.name}`: {s.what}" for s in SCENARIOS.values() if s.name in names) + ".",
        "",
    ]
    if failed:
        lines += ["Failed runs:", "", *[f"- {r.summary()}" for r in failed], ""]
    return "\n".join(lines)


def cpu_model() -> str:
    """The machine's CPU, for the results' header (``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
