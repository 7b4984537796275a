"""The fan-out core with in-memory sinks: what is written, skipped, failed and announced."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import pytest

from streams.core.breaker import Breaker
from streams.core.dispatch import Dispatcher, KeyState
from streams.core.flood import FloodGuard, FloodGuardTripped
from streams.model import ChangeOp, Op, WalEntry, new_entry
from streams.ports import Outcome, SinkResult, SinkWrite
from tests.unit.fakes import MemorySink


def _entry(key: str, seq: int, op: Op = Op.UPSERT, **kw: object) -> WalEntry:
    payload = b"" if op is Op.DELETE else json.dumps({"v": seq}).encode()
    return new_entry("ns", key, op, payload, sequence=seq, **kw)  # type: ignore[arg-type]


def _dispatch(d: Dispatcher, entries: list[WalEntry], state: dict[str, KeyState] | None = None):  # type: ignore[no-untyped-def]
    return asyncio.run(d.dispatch(entries, state or {}))


def test_applied_everywhere_announces_c_then_u_then_d() -> None:
    a, b = MemorySink("a"), MemorySink("b")
    d = Dispatcher({"a": a, "b": b}, lambda raw: json.loads(raw))
    result = _dispatch(d, [_entry("k", 1), _entry("k", 2), _entry("k", 3, Op.DELETE), _entry("k", 4)])
    assert [o.change for o in result.outcomes] == [ChangeOp.CREATE, ChangeOp.UPDATE, ChangeOp.DELETE, ChangeOp.CREATE]
    assert result.state["k"].applied == {"a": 4, "b": 4}


def test_a_duplicate_touches_no_sink_and_announces_nothing() -> None:
    a = MemorySink("a")
    d = Dispatcher({"a": a}, lambda raw: json.loads(raw))
    first = _dispatch(d, [_entry("k", 5)])
    writes = a.writes
    again = _dispatch(d, [_entry("k", 5), _entry("k", 3)], first.state)
    assert a.writes == writes
    assert all(o.duplicate and o.change is None for o in again.outcomes)


def test_a_partial_success_is_remembered_per_target() -> None:
    a, b = MemorySink("a"), MemorySink("b")
    b.fail = Outcome.RETRYABLE
    d = Dispatcher({"a": a, "b": b}, lambda raw: json.loads(raw))
    result = _dispatch(d, [_entry("k", 7)])
    (outcome,) = result.outcomes
    assert outcome.applied == ("a",) and outcome.pending_targets == ("b",) and outcome.change is None
    assert result.state["k"].applied == {"a": 7}
    b.fail = None
    writes_a = a.writes
    retried = _dispatch(d, [_entry("k", 7)], result.state)
    assert a.writes == writes_a  # only the target that failed is written again
    assert retried.outcomes[0].applied == ("b",) and retried.outcomes[0].change is ChangeOp.CREATE


def test_a_delete_of_an_absent_key_changes_nothing_but_is_remembered() -> None:
    a = MemorySink("a")
    d = Dispatcher({"a": a}, lambda raw: json.loads(raw))
    result = _dispatch(d, [_entry("k", 5, Op.DELETE), _entry("k", 3), _entry("k", 9)])
    deleted, stale, created = result.outcomes
    assert deleted.change is None and deleted.result == "applied"  # a tombstone, but no event
    assert stale.change is None and stale.result == "stale"  # older than the delete: never resurrects the key
    assert created.change is ChangeOp.CREATE


def test_an_entry_overtaken_while_pending_is_never_announced() -> None:
    a, b = MemorySink("a"), MemorySink("b")
    d = Dispatcher({"a": a, "b": b}, lambda raw: json.loads(raw))
    b.fail = Outcome.RETRYABLE
    new = _dispatch(d, [_entry("k", 9)])  # written to a, pending on b
    b.fail = None
    # A late writer's older entry arrives before the retry: b takes it, a already holds something newer.
    late = _dispatch(d, [_entry("k", 5)], new.state)
    (outcome,) = late.outcomes
    assert outcome.applied == ("b",) and outcome.skipped == ("a",)
    assert outcome.change is None and outcome.result == "stale"
    # The retried entry completes: it is the key's version everywhere now, announced as the first one.
    retried = _dispatch(d, [_entry("k", 9)], late.state)
    assert retried.outcomes[0].change is ChangeOp.CREATE and retried.state["k"].version == 9
    # A pending entry that a newer one overtook everywhere is dropped without an event.
    b.fail = Outcome.RETRYABLE
    pending = _dispatch(d, [_entry("k", 20)], retried.state)
    b.fail = None
    overtaken = _dispatch(d, [_entry("k", 30), _entry("k", 20)], pending.state)
    newest, old = overtaken.outcomes
    assert newest.change is ChangeOp.UPDATE
    assert old.change is None and old.result == "stale"  # (b may see it: versioned, it keeps 30)


def test_bad_payload_and_unknown_target_are_fatal() -> None:
    d = Dispatcher({"a": MemorySink("a")}, lambda raw: json.loads(raw))
    bad = new_entry("ns", "k", Op.UPSERT, b"not json", sequence=1)
    result = _dispatch(d, [bad, _entry("k2", 2, targets=("nope",))])
    assert all(o.fatal for o in result.outcomes)
    assert "nope" in result.outcomes[1].first_error()


def test_a_sink_that_raises_is_retryable_not_fatal() -> None:
    class Exploding(MemorySink):
        async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
            raise ConnectionError("boom")

    d = Dispatcher({"a": Exploding("a")}, lambda raw: json.loads(raw))
    (outcome,) = _dispatch(d, [_entry("k", 1)]).outcomes
    assert outcome.failed["a"].outcome is Outcome.RETRYABLE


def test_breaker_fails_fast_while_open_and_closes_on_success() -> None:
    now = [0.0]
    sink = MemorySink("s")
    breaker = Breaker(sink, open_s=1.0, max_open_s=4.0, clock=lambda: now[0])
    sink.fail = Outcome.RETRYABLE
    asyncio.run(breaker.write([SinkWrite("k", Op.DELETE, 1, None)]))
    assert breaker.is_open and sink.writes == 1
    asyncio.run(breaker.write([SinkWrite("k", Op.DELETE, 1, None)]))
    assert sink.writes == 1  # not called while open
    now[0] = 1.5
    sink.fail = None
    results = asyncio.run(breaker.write([SinkWrite("k", Op.DELETE, 2, None)]))
    assert results[0].outcome is Outcome.APPLIED and not breaker.is_open


def test_flood_guard_refuses_past_the_limit_per_minute() -> None:
    now = [0.0]
    guard = FloodGuard("ns", per_minute=5, clock=lambda: now[0])
    guard.admit(4)
    try:
        guard.admit(2)
        raise AssertionError("should have tripped")
    except FloodGuardTripped as exc:
        assert "ns" in str(exc) and "5" in str(exc)
    now[0] = 61
    guard.admit(5)
    now[0] = 200
    guard.admit(9)  # larger than the limit: admitted into an empty window rather than held forever
    try:
        guard.admit(1)
        raise AssertionError("should have tripped")
    except FloodGuardTripped:
        pass


def test_an_outage_is_told_once_when_it_starts_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    sink = MemorySink("search")
    breaker = Breaker(sink, open_s=1.0, max_open_s=2.0, clock=lambda: now[0], namespace="ns", remind_s=30)
    sink.fail = Outcome.RETRYABLE
    with caplog.at_level(logging.INFO, logger="streams.core.breaker"):
        for step in range(20):  # 20 s of failing trial batches
            now[0] = step * 1.0
            asyncio.run(breaker.write([SinkWrite("k", Op.DELETE, 1, None)]))
        assert len(caplog.records) == 1 and "not answering" in caplog.records[0].getMessage()
        assert breaker.down_since == 0.0
        now[0] = 45.0
        asyncio.run(breaker.write([SinkWrite("k", Op.DELETE, 1, None)]))  # still down: one reminder
        sink.fail = None
        now[0] = 50.0
        asyncio.run(breaker.write([SinkWrite("k", Op.DELETE, 2, None)]))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and "still not answering after 45s" in messages[1]
    assert "answers again after an outage of 50s" in messages[2]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert breaker.down_since is None
