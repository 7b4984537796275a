"""The retry schedule: tiers chosen by backoff, a budget that ends, FIFO tiers, and delays never early."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.schedule import RetrySchedule, due_ms, jitter_ms
from streams.model import Op, new_entry

TIERS = (1_000, 10_000, 60_000, 600_000)


def test_backoff_picks_the_smallest_tier_that_covers_it_and_ends_with_the_budget() -> None:
    schedule = RetrySchedule(TIERS, backoff_multiplier=3.0, max_attempts=6)
    hops = [schedule.after_failure(attempt, now_ms=0) for attempt in range(1, 7)]
    assert [h.tier if h else None for h in hops] == ["1s", "10s", "10s", "1m", "10m", None]
    assert hops[0] is not None and hops[0].due_ms == 1_000


def test_backoff_beyond_the_last_tier_stays_in_the_last_tier() -> None:
    schedule = RetrySchedule(TIERS, backoff_multiplier=10.0, max_attempts=20)
    hop = schedule.after_failure(9, now_ms=5)
    assert hop is not None and hop.tier == "10m" and hop.due_ms == 600_005


@pytest.mark.parametrize("bad", [(), (10, 5), (0, 5), (5, 5)])
def test_tiers_must_be_positive_and_increasing(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        RetrySchedule(bad, 2.0, 3)


@given(due=st.integers(1, 3_600_000), now=st.integers(0, 3_600_000))
def test_a_delayed_entry_walks_down_the_tiers_and_is_never_released_early(due: int, now: int) -> None:
    schedule = RetrySchedule(TIERS, 2.0, 8)
    start = now
    hops = 0
    while (hop := schedule.toward(due, now)) is not None:
        if hop.due_ms == now:  # the last stretch: due at once in the smallest tier, waited out in memory
            assert hop.tier == "1s" and 0 < due - now < TIERS[0]
            now = due
            continue
        # Every other hop keeps its tier first-in first-out (due = now + tier) and never passes the due time.
        assert hop.due_ms == now + hop.tier_ms <= due
        now = hop.due_ms
        hops += 1
        assert hops < 100
    # Released exactly when due: never early, and with no lateness from the hops themselves.
    assert now == due if start < due else now == start


def test_jitter_is_drawn_once_per_entry() -> None:
    entry = new_entry("orders", "k", Op.DELETE, b"", delay_ms=5000, jitter_ms=1000, now_us=1_000_000)
    assert 0 <= jitter_ms(entry) <= 1000
    assert jitter_ms(entry) == jitter_ms(entry)
    assert due_ms(entry) == 1_000 + 5_000 + jitter_ms(entry)
    others = {jitter_ms(new_entry("orders", "k", Op.DELETE, b"", jitter_ms=1000)) for _ in range(50)}
    assert len(others) > 10


def test_an_entry_without_delay_is_due_at_once() -> None:
    assert due_ms(new_entry("orders", "k", Op.DELETE, b"")) == 0
