"""Delete pacing: slots never come faster than the rate, and other writes are not held."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from streams.core.throttle import DeletePacer, Throttled, fleet_share
from streams.model import Op
from streams.ports import Outcome, SinkResult, SinkWrite


def test_slots_are_spaced_at_the_rate() -> None:
    now = [0.0]
    pacer = DeletePacer(100, clock=lambda: now[0])
    assert pacer.reserve(50) == 0.0
    assert pacer.reserve(50) == 0.5  # the next 50 may start once the first 50 had their half second
    now[0] = 2.0
    assert pacer.reserve(10) == 0.0  # idle time is not saved up as a burst


def test_throttled_sink_writes_deletes_in_paced_steps() -> None:
    class Recorder:
        name = "r"

        def __init__(self) -> None:
            self.calls: list[int] = []

        async def ensure_schema(self) -> None: ...

        async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
            self.calls.append(len(writes))
            return [SinkResult(Outcome.APPLIED)] * len(writes)

        async def close(self) -> None: ...

    inner = Recorder()
    sink = Throttled(inner, DeletePacer(400))  # steps of 20 deletes, 0.05 s apart
    deletes = [SinkWrite(f"k{i}", Op.DELETE, i, None) for i in range(100)]
    loop = asyncio.new_event_loop()
    started = loop.time()
    results = loop.run_until_complete(sink.write(deletes))
    took = loop.time() - started
    loop.close()
    assert len(results) == 100 and inner.calls == [20] * 5
    assert took >= 0.19  # five steps of 0.05 s each: the first goes at once


def test_upserts_alone_are_not_paced() -> None:
    pacer = DeletePacer(1)
    upserts = [SinkWrite("k", Op.UPSERT, 1, {})]

    class Ok:
        name = "ok"

        async def ensure_schema(self) -> None: ...

        async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
            return [SinkResult(Outcome.APPLIED)] * len(writes)

        async def close(self) -> None: ...

    assert asyncio.run(Throttled(Ok(), pacer).write(upserts * 50))[0].outcome is Outcome.APPLIED
    assert pacer.reserve(1) == 0.0  # nothing was reserved for upserts


def test_a_worker_paces_at_its_share_of_the_partitions() -> None:
    now = [0.0]
    pacer = DeletePacer(600, clock=lambda: now[0])
    assert pacer.rate == 600  # alone until an assignment says otherwise
    pacer.assign(2, 6)
    assert pacer.rate == 200
    assert pacer.reserve(100) == 0.0
    assert pacer.reserve(100) == 0.5  # 100 deletes at 200/s
    pacer.assign(6, 6)  # the other workers left: the whole rate
    now[0] = 10.0
    pacer.reserve(600)
    assert pacer.reserve(1) == 1.0
    pacer.assign(0, 6)  # no partitions: the share stays, no deletes arrive anyway
    assert pacer.rate == 600


def test_shares_of_a_fleet_add_up_to_the_rate() -> None:
    for partitions in (1, 3, 6, 12):
        for workers in range(1, partitions + 1):
            owned = [partitions // workers + (i < partitions % workers) for i in range(workers)]
            shares = [fleet_share(n, partitions) for n in owned]
            assert abs(sum(shares) - 1.0) < 1e-9


def test_a_share_of_more_partitions_than_the_log_has_is_an_error() -> None:
    with pytest.raises(ValueError, match="7 of 6"):
        fleet_share(7, 6)
    with pytest.raises(ValueError):
        DeletePacer(100).assign(1, 0)


def test_the_deletes_a_target_took_are_counted() -> None:
    class Half:
        name = "half"

        async def ensure_schema(self) -> None: ...

        async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
            return [SinkResult(Outcome.APPLIED if i % 2 else Outcome.RETRYABLE) for i in range(len(writes))]

        async def close(self) -> None: ...

    counted: list[int] = []
    writes = [SinkWrite(f"k{i}", Op.DELETE if i < 40 else Op.UPSERT, i, None) for i in range(60)]
    asyncio.run(Throttled(Half(), DeletePacer(100_000), counted.append).write(writes))
    assert sum(counted) == 20  # the deletes the target took; upserts and failed deletes are not counted
