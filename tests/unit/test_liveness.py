"""The stall rule: unhealthy only when records wait and commits have stood still for the configured time."""

from __future__ import annotations

from streams.worker.liveness import Progress, assess


def test_waiting_input_with_frozen_commits_is_a_stall_after_the_limit() -> None:
    p = Progress(lag=0, committed=100, still_since=0.0)
    p, problem = assess(p, lag=50, committed=100, now=10.0, stall_s=30)
    assert problem is None
    p, problem = assess(p, lag=50, committed=100, now=31.0, stall_s=30)
    assert problem is not None and "50 records wait" in problem


def test_moving_commits_or_an_empty_log_are_healthy() -> None:
    p = Progress(lag=10, committed=100, still_since=0.0)
    p, problem = assess(p, lag=10, committed=150, now=100.0, stall_s=30)
    assert problem is None and p.still_since == 100.0
    p, problem = assess(p, lag=0, committed=150, now=500.0, stall_s=30)
    assert problem is None
    p, problem = assess(p, lag=3, committed=150, now=520.0, stall_s=30)
    assert problem is None  # the clock restarted when the log was empty
    _, problem = assess(p, lag=3, committed=150, now=531.0, stall_s=30)
    assert problem is not None
