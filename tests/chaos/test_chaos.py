"""The chaos suite: each fault scenario against the whole stack, reckoned by the ledger.

``CHAOS_PROFILE=short`` (the default, inside ``make test``): a web SIGKILL and
the ledger's self-check, once each. ``CHAOS_PROFILE=full`` (``make
test-chaos``): every scenario but those in ``CI_LEAVES_OUT`` (each with its open
defect), ``CHAOS_REPEAT`` times (3). Pass rule per run:
lost = 0 (1 for the self-check, which deletes a committed event behind the
platform's back), applied twice = 0, and every dead letter matched to the
canary that failed on purpose. ``bench/chaos.py`` runs the same scenarios and
writes the table to ``bench/results/chaos.md``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.chaos.report import chaos_markdown, cpu_model
from tests.chaos.scenarios import CI_LEAVES_OUT, SCENARIOS, SHORT_PROFILE, RunResult, scenario_run

RESULTS: list[RunResult] = []
STARTED = time.monotonic()

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _cases() -> list[tuple[str, int]]:
    if os.environ.get("CHAOS_PROFILE", "short") == "full":
        repeat = int(os.environ.get("CHAOS_REPEAT", "3"))
        return [(name, rep) for name in SCENARIOS if name not in CI_LEAVES_OUT for rep in range(1, repeat + 1)]
    return [(name, 1) for name in SHORT_PROFILE]


@pytest.mark.parametrize(("scenario", "repetition"), _cases(), ids=lambda v: str(v))
def test_nothing_is_lost_or_applied_twice(chaos_stack, scenario, repetition):
    stack, tap = chaos_stack
    result = scenario_run(stack, tap, scenario, repetition)
    RESULTS.append(result)
    print(result.summary())
    assert result.passed, result.summary() + "\n" + stack.logs()


@pytest.fixture(scope="module", autouse=True)
def _results_table():
    """``CHAOS_RESULTS_FILE=path``: the runs' table, as bench/chaos.py writes it, at the end of the module."""
    yield
    path = os.environ.get("CHAOS_RESULTS_FILE")
    if path and RESULTS:
        command = f"make test-chaos (CHAOS_REPEAT={os.environ.get('CHAOS_REPEAT', '3')})"
        text = chaos_markdown(RESULTS, command=command, total_s=time.monotonic() - STARTED, cpu=cpu_model())
        Path(path).write_text(text)
