"""The chaos suite's scenarios, each repeated, as one table: ``bench/results/chaos.md``.

Run (from the repository root; the stack runs on private PostgreSQL, Redis and
RabbitMQ of its own, so nothing shared is touched):

    .venv/bin/python bench/chaos.py [--repeat 3] [--scenarios kill-web,restart-redis]

The same stack, workload, faults and ledger as ``make test-chaos``
(tests/chaos/): two web instances behind HAProxy, two relays, the subscribers,
the archiver, a realtime and a batch worker and beat; REST and WebSocket
appends, two resuming listeners and canaries in ``ok``, ``fail`` and ``crash``
modes. Each fault lands while work is in flight (the figures at that moment
are in the table). The table: per scenario, operations, lost, applied twice,
dead letters by reason, the longest gap between two acknowledged appends
around the fault (what a client saw) and how long the platform took to settle
once the clients stopped. There is no baseline: the pass rule is absolute
(lost = 0, applied twice = 0; the ledger's self-check must count exactly one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # bench/ first on sys.path would let bench/queue.py shadow the stdlib's queue
    sys.path[:] = [str(Path(__file__).resolve().parents[1]), *sys.path[1:]]

from bench._lib import support
from tests.chaos.ledger import Tap, tap_declare
from tests.chaos.report import chaos_markdown, chaos_table
from tests.chaos.scenarios import SCENARIOS, RunResult, scenario_run
from tests.chaos.stack import ChaosStack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    stack = ChaosStack()
    results: list[RunResult] = []
    t0 = time.monotonic()
    try:
        stack.start()
        print(f"stack up in {stack.started_in:.1f}s", flush=True)
        tap_declare(stack.broker_url)
        tap = Tap(stack.broker_url)
        for name in names:
            for rep in range(1, args.repeat + 1):
                started = time.monotonic()
                result = scenario_run(stack, tap, name, rep)
                results.append(result)
                verdict = "pass" if result.passed else "FAIL"
                print(f"[{verdict}] {name} #{rep} in {time.monotonic() - started:.0f}s: {result.summary()}", flush=True)
    finally:
        stack.stop()
    total = time.monotonic() - t0
    table = chaos_table(results)
    print("\n".join(table))
    failed = [r for r in results if not r.passed]
    text = chaos_markdown(
        results,
        command=f".venv/bin/python bench/chaos.py --repeat {args.repeat}",
        total_s=total,
        cpu=support.cpu_model(),
    )
    support.write_results("chaos", text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
