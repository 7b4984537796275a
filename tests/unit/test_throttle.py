"""Delete pacing: slots never come faster than the rate, and other writes are not held."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streams.core.throttle import DeletePacer, Throttled
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
