"""One chaos stack for the whole chaos module (about 20 s to start: three private services, twelve processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.ledger import Tap, tap_declare
from tests.chaos.stack import ChaosStack


@pytest.fixture(scope="module")
def chaos_stack() -> Iterator[tuple[ChaosStack, Tap]]:
    stack = ChaosStack()
    try:
        stack.start()
        tap_declare(stack.broker_url)
        yield stack, Tap(stack.broker_url)
    finally:
        stack.stop()
