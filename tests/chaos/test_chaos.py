"""The chaos suite: each fault scenario against the whole stack, reckoned by the ledger.

``CHAOS_PROFILE=short`` (the default, inside ``make test``): a web SIGKILL and
the ledger's self-check, once each. ``CHAOS_PROFILE=full`` (``make
test-chaos``): every scenario, ``CHAOS_REPEAT`` times (3). Pass rule per run:
lost = 0 (1 for the self-check, which deletes a committed event behind the
platform's back), applied twice = 0, and every dead letter matched to the
canary that failed on purpose. ``bench/chaos.py`` runs the same scenarios and
writes the table to ``bench/results/chaos.md``.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.scenarios import SCENARIOS, SHORT_PROFILE, scenario_run

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _cases() -> list[tuple[str, int]]:
    if os.environ.get("CHAOS_PROFILE", "short") == "full":
        repeat = int(os.environ.get("CHAOS_REPEAT", "3"))
        return [(name, rep) for name in SCENARIOS for rep in range(1, repeat + 1)]
    return [(name, 1) for name in SHORT_PROFILE]


@pytest.mark.parametrize(("scenario", "repetition"), _cases(), ids=lambda v: str(v))
def test_nothing_is_lost_or_applied_twice(chaos_stack, scenario, repetition):
    stack, tap = chaos_stack
    result = scenario_run(stack, tap, scenario, repetition)
    print(result.summary())
    assert result.passed, result.summary() + "\n" + stack.logs()
