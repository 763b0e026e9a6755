"""The stored-event quota's rolling window, on the real Redis, with the clock in the test's hands."""

from __future__ import annotations

import pytest

from apps.context import quotas
from apps.context.quotas import EventQuotaExceeded, event_quota_reserve


@pytest.fixture
def clock(monkeypatch):
    now = {"t": 1_000_000.0}
    monkeypatch.setattr(quotas.time, "time", lambda: now["t"])
    return now


def test_the_window_rolls_by_buckets_and_retry_after_says_when_room_comes(settings, clock):
    # given a quota of 5 events per 240 s (buckets of 10 s)
    settings.EVENT_QUOTA_PER_USER = 5
    settings.EVENT_QUOTA_WINDOW_S = 240
    event_quota_reserve(user_id="u1", count=3)
    clock["t"] += 50
    event_quota_reserve(user_id="u1", count=2)

    # when the user wants one more, then two more, before anything left the window
    with pytest.raises(EventQuotaExceeded) as one:
        event_quota_reserve(user_id="u1", count=1)

    # then it waits until the first 3 leave: 24 buckets after theirs began (190 s from now)
    assert one.value.status_code == 429 and one.value.retry_after == 190
    assert one.value.details["retry_after_ms"] == 190_000

    # and the others are not affected
    event_quota_reserve(user_id="u2", count=5)

    # once those buckets left the window, there is room again for exactly three
    clock["t"] += 190
    event_quota_reserve(user_id="u1", count=3)
    with pytest.raises(EventQuotaExceeded):
        event_quota_reserve(user_id="u1", count=1)


def test_released_events_do_not_count_and_a_batch_over_the_quota_never_fits(settings, clock):
    settings.EVENT_QUOTA_PER_USER = 5
    settings.EVENT_QUOTA_WINDOW_S = 240
    reservation = event_quota_reserve(user_id="u1", count=5)
    reservation.release(4)  # four were duplicates
    event_quota_reserve(user_id="u1", count=4)
    with pytest.raises(EventQuotaExceeded) as too_big:
        event_quota_reserve(user_id="u2", count=6)
    assert too_big.value.retry_after == 240


def test_no_quota_when_it_is_zero(settings, clock):
    settings.EVENT_QUOTA_PER_USER = 0
    for _ in range(3):
        assert event_quota_reserve(user_id="u1", count=1_000_000).key is None
