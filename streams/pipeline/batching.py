"""Batches with backpressure: records in, batches processed concurrently, acknowledged strictly in order."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

from streams.pipeline.apply import NotDurable


class Batcher:
    """Collects items into batches of about ``max_size`` records (an item weighs ``size(item)`` records: one by
    default, a whole chunk of records for the fan-out agent), started when full or ``within`` seconds after the
    first item arrived.

    Up to ``depth`` batches are in flight: while one waits for its follow-up records to become durable, the next
    is already being applied. A batch is acknowledged only after its ``process`` returned, and strictly in order:
    only after every earlier batch was acknowledged. Memory stays bounded: with ``depth`` batches in flight and
    the buffer full, the adder waits (backpressure pauses consumption). When a batch fails, neither it nor any
    later batch is acknowledged: ``on_fatal`` is called once (not for a cancellation at shutdown), and ``add``
    and ``flush`` raise from then on, so the caller stops and the records are read again."""

    def __init__(
        self,
        process: Callable[[list[Any]], Awaitable[None]],
        ack: Callable[[list[Any]], Awaitable[None]],
        max_size: int,
        within: float,
        on_fatal: Callable[[BaseException], None],
        depth: int = 2,
        size: Callable[[Any], int] | None = None,
    ) -> None:
        self._process = process
        self._ack = ack
        self._max = max_size
        self._within = within
        self._on_fatal = on_fatal
        self._depth = max(1, depth)
        self._size = size
        self._buffer: list[Any] = []
        self._weight = 0  # records in the buffer
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: collections.deque[asyncio.Task[None]] = collections.deque()  # in batch order
        self._failure: BaseException | None = None

    async def add(self, item: Any) -> None:
        self._check()
        self._buffer.append(item)
        self._weight += 1 if self._size is None else self._size(item)
        if self._weight >= self._max:
            await self._submit()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._within, self._submit_later)

    def _submit_later(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._submit())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(retrieve)  # a failure is reported by the batch that failed

    async def flush(self) -> None:
        """Start what is buffered, then wait until every batch is processed and acknowledged."""
        await self._submit()
        while self._inflight:
            await asyncio.wait([self._inflight[-1]])
        self._check()

    async def _submit(self) -> None:
        async with self._lock:
            if not self._buffer:
                return
            while len(self._inflight) >= self._depth:
                await asyncio.wait([self._inflight[0]])
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._check()
            batch, self._buffer, self._weight = self._buffer, [], 0
            previous = self._inflight[-1] if self._inflight else None
            task = asyncio.get_running_loop().create_task(self._run(batch, previous))
            self._inflight.append(task)
            task.add_done_callback(self._done)

    async def _run(self, batch: list[Any], previous: asyncio.Task[None] | None) -> None:
        try:
            await self._process(batch)
        except BaseException as exc:
            # Nothing of this batch is acknowledged; the process stops so the records are read again.
            self._fail(exc)
            raise
        try:
            if previous is not None:
                await asyncio.shield(previous)  # acknowledged in order; raises (no ack) when an earlier batch failed
            await self._ack(batch)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.remove(task)
        retrieve(task)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            if not isinstance(exc, asyncio.CancelledError):  # shutdown: the records are simply read again
                self._on_fatal(exc)

    def _check(self) -> None:
        if self._failure is not None:
            raise NotDurable(f"an earlier batch failed: {self._failure!r}") from self._failure


def finish(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)


def retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen: it is reported where it happened, not again as 'never retrieved'."""
    if not future.cancelled():
        future.exception()
