"""Paces deletes to a namespace's `throttle.max_deletes_per_second`, so bulk deletes keep the store's load flat."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

from streams.model import Op
from streams.ports import Sink, SinkResult, SinkWrite


class DeletePacer:
    """Hands out slots at most ``rate`` per second, shared by every event loop of the process (thread-safe)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self, count: int) -> float:
        """Reserve ``count`` slots; returns how long to wait before using the first of them."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + count / self.rate
            return start - now


class Throttled:
    """A sink whose deletes go out in small steps of at most a twentieth of a second's worth, each on its slot
    (so no one-second window sees more than the rate plus one step)."""

    def __init__(self, sink: Sink, pacer: DeletePacer) -> None:
        self.name = sink.name
        self._sink = sink
        self._pacer = pacer
        self._step = max(1, int(pacer.rate / 20))

    async def ensure_schema(self) -> None:
        await self._sink.ensure_schema()

    async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
        if not any(w.op is Op.DELETE for w in writes):
            return await self._sink.write(writes)
        results: list[SinkResult] = []
        chunk: list[SinkWrite] = []
        deletes = 0
        for w in writes:
            chunk.append(w)
            deletes += w.op is Op.DELETE
            if deletes == self._step:
                results += await self._paced(chunk, deletes)
                chunk, deletes = [], 0
        if chunk:
            results += await self._paced(chunk, deletes)
        return results

    async def _paced(self, chunk: list[SinkWrite], deletes: int) -> list[SinkResult]:
        wait = self._pacer.reserve(deletes) if deletes else 0.0
        if wait > 0:
            await asyncio.sleep(wait)
        return await self._sink.write(chunk)

    async def close(self) -> None:
        await self._sink.close()
