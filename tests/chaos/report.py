"""One table of chaos runs: scenario x operations, lost, applied twice, dead-lettered by reason, recovery."""

from __future__ import annotations

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
