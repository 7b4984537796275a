"""The Batcher: batches processed concurrently, acknowledged strictly in order, never past a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from streams.pipeline.apply import NotDurable
from streams.pipeline.batching import Batcher


class Recorder:
    """process/ack callbacks whose batches finish when the test says so."""

    def __init__(self) -> None:
        self.started: list[list[int]] = []
        self.acked: list[list[int]] = []
        self.fatal: list[BaseException] = []
        self.gates: dict[int, asyncio.Future[None]] = {}  # first item of a batch -> what ends its processing

    def gate(self, first: int) -> asyncio.Future[None]:
        return self.gates.setdefault(first, asyncio.get_running_loop().create_future())

    async def process(self, batch: list[int]) -> None:
        self.started.append(batch)
        await self.gate(batch[0])

    async def ack(self, batch: list[int]) -> None:
        self.acked.append(batch)

    def batcher(self, size: int = 2, within: float = 60.0, depth: int = 2) -> Batcher:
        return Batcher(self.process, self.ack, size, within, self.fatal.append, depth=depth)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``condition`` holds (a positive signal, with a generous bound)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def test_pipelined_batches_are_acknowledged_in_arrival_order() -> None:
    async def scenario() -> None:
        r = Recorder()
        b = r.batcher(size=2)
        for item in (1, 2, 3, 4):
            await b.add(item)
        await until(lambda: len(r.started) == 2, "both batches to start")
        r.gate(3).set_result(None)  # the second batch finishes first
        await asyncio.sleep(0.01)
        assert r.acked == []  # it waits for the first
        r.gate(1).set_result(None)
        await b.flush()
        assert r.acked == [[1, 2], [3, 4]]
        assert r.fatal == []

    run(scenario)


def test_a_failed_batch_stops_every_later_ack() -> None:
    async def scenario() -> None:
        r = Recorder()
        b = r.batcher(size=2)
        for item in (1, 2, 3, 4):
            await b.add(item)
        await until(lambda: len(r.started) == 2, "both batches to start")
        r.gate(3).set_result(None)
        r.gate(1).set_exception(NotDurable("a change event was not stored"))
        await until(lambda: bool(r.fatal), "the failure to be reported")
        await asyncio.sleep(0.01)
        assert r.acked == []  # neither the failed batch nor the one after it
        assert len(r.fatal) == 1 and isinstance(r.fatal[0], NotDurable)
        with pytest.raises(NotDurable):
            await b.add(5)
        with pytest.raises(NotDurable):
            await b.flush()
        assert [5] not in r.started

    run(scenario)


def test_add_waits_while_depth_batches_are_in_flight() -> None:
    async def scenario() -> None:
        r = Recorder()
        b = r.batcher(size=1, depth=2)
        await b.add(1)
        await b.add(2)
        third = asyncio.create_task(b.add(3))  # a full buffer with two batches in flight: backpressure
        await asyncio.sleep(0.05)
        assert not third.done() and len(r.started) == 2
        r.gate(1).set_result(None)
        await asyncio.wait_for(third, 10)
        await until(lambda: len(r.started) == 3, "the third batch to start")
        r.gate(2).set_result(None)
        r.gate(3).set_result(None)
        await b.flush()
        assert r.acked == [[1], [2], [3]]

    run(scenario)


def test_a_partial_batch_starts_when_its_time_is_up() -> None:
    async def scenario() -> None:
        r = Recorder()
        b = r.batcher(size=100, within=0.02)
        await b.add(1)
        await b.add(2)
        assert r.started == []
        await until(lambda: r.started == [[1, 2]], "the timer to start the batch")
        r.gate(1).set_result(None)
        await until(lambda: r.acked == [[1, 2]], "the batch to be acknowledged")

    run(scenario)


def test_cancellation_at_shutdown_is_not_reported_as_a_crash() -> None:
    async def scenario() -> None:
        r = Recorder()
        b = r.batcher(size=1)
        await b.add(1)
        await until(lambda: len(r.started) == 1, "the batch to start")
        r.gate(1).cancel()
        with pytest.raises(NotDurable):
            await b.flush()
        assert r.fatal == [] and r.acked == []

    run(scenario)
