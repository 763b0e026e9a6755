"""The micro-batcher: batches form under concurrency, the delay bound holds, a bad input fails alone.

These use a stand-in batch function (the batcher is model-agnostic); the real
model behind the batcher is exercised in test_runtime.py and tests/integration/ai.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from workers.inference.batcher import MicroBatcher


class Recorder:
    def __init__(self, *, cost_s: float = 0.0, poison: str | None = None):
        self.cost_s = cost_s
        self.poison = poison
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[str]) -> list[str]:
        with self.lock:
            self.calls.append(list(items))
        if self.cost_s:
            time.sleep(self.cost_s)
        if self.poison is not None and self.poison in items:
            raise ValueError(f"cannot process {self.poison!r}")
        return [item.upper() for item in items]


@pytest.fixture
def make_batcher():
    created: list[MicroBatcher] = []

    def factory(fn, **kwargs) -> MicroBatcher:
        batcher = MicroBatcher(fn, **kwargs)
        created.append(batcher)
        return batcher

    yield factory
    for batcher in created:
        batcher.close()


def _concurrently(batcher: MicroBatcher, items: list[str]) -> dict[str, object]:
    results: dict[str, object] = {}
    barrier = threading.Barrier(len(items))

    def worker(item: str) -> None:
        barrier.wait()
        try:
            results[item] = batcher(item, timeout=10)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            results[item] = exc

    threads = [threading.Thread(target=worker, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    return results


def test_concurrent_callers_share_batches_and_each_gets_its_own_result(make_batcher):
    # Given a batch function that costs 20 ms per call whatever the batch size
    fn = Recorder(cost_s=0.02)
    batcher = make_batcher(fn, max_batch=32, max_delay_ms=50)
    items = [f"text-{i}" for i in range(32)]

    # When 32 callers submit at the same moment
    results = _concurrently(batcher, items)

    # Then every caller gets the answer for its own input, from a handful of batches
    assert results == {item: item.upper() for item in items}
    assert sum(len(call) for call in fn.calls) == 32
    assert len(fn.calls) <= 4, [len(call) for call in fn.calls]
    assert max(len(call) for call in fn.calls) >= 8


def test_batch_never_exceeds_max_batch(make_batcher):
    fn = Recorder(cost_s=0.01)
    batcher = make_batcher(fn, max_batch=4, max_delay_ms=200)
    items = [f"t{i}" for i in range(10)]

    results = _concurrently(batcher, items)

    assert len(results) == 10
    assert all(len(call) <= 4 for call in fn.calls)


def test_a_lone_input_waits_at_most_the_delay_bound(make_batcher):
    # Given a batcher that waits up to 80 ms for company
    fn = Recorder()
    batcher = make_batcher(fn, max_batch=32, max_delay_ms=80)

    # When one input arrives alone
    started = time.perf_counter()
    assert batcher("alone", timeout=5) == "ALONE"
    elapsed = time.perf_counter() - started

    # Then it ran after the delay bound, not much later (and not much earlier)
    assert 0.07 <= elapsed < 0.3, elapsed
    assert fn.calls == [["alone"]]


def test_a_full_batch_runs_without_waiting_for_the_delay(make_batcher):
    # Given a long delay bound but a small max batch
    fn = Recorder()
    batcher = make_batcher(fn, max_batch=4, max_delay_ms=5000)

    # When max_batch inputs arrive
    started = time.perf_counter()
    results = batcher.map(["a", "b", "c", "d"], timeout=5)

    # Then they run at once, as one batch
    assert results == ["A", "B", "C", "D"]
    assert time.perf_counter() - started < 1.0
    assert fn.calls == [["a", "b", "c", "d"]]


def test_delay_counts_from_the_first_waiting_input(make_batcher):
    # Inputs arriving one after another do not extend the wait of the first one.
    fn = Recorder()
    batcher = make_batcher(fn, max_batch=100, max_delay_ms=100)
    started = time.perf_counter()
    first = batcher.submit("first")
    for i in range(5):
        time.sleep(0.03)
        batcher.submit(f"late-{i}")
    first.result(timeout=5)
    assert time.perf_counter() - started < 0.25


def test_a_poison_input_fails_alone_and_its_batch_mates_succeed(make_batcher):
    # Given a batch function that fails any batch containing one bad input
    fn = Recorder(poison="poison")
    batcher = make_batcher(fn, max_batch=8, max_delay_ms=100)
    items = ["a", "b", "c", "poison", "e", "f", "g", "h"]

    # When the bad input shares a batch with good ones
    results = _concurrently(batcher, items)

    # Then only the bad input's caller sees the error
    assert isinstance(results["poison"], ValueError)
    assert {k: v for k, v in results.items() if k != "poison"} == {i: i.upper() for i in items if i != "poison"}
    assert batcher.stats.failed_items == 1
    assert batcher.stats.singles_after_error >= 2


def test_wrong_result_count_is_an_error_not_a_mismatch(make_batcher):
    batcher = make_batcher(lambda items: ["x"], max_batch=2, max_delay_ms=50)
    futures = [batcher.submit("a"), batcher.submit("b")]
    # The batch fails as a whole, each retried singly: single calls return one result.
    assert [f.result(timeout=5) for f in futures] == ["x", "x"]


def test_closed_batcher_refuses_new_work(make_batcher):
    from workers.inference.batcher import BatcherClosed

    batcher = make_batcher(Recorder(), max_batch=2, max_delay_ms=1)
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit("late")
