"""Paces deletes to a namespace's `throttle.max_deletes_per_second`, so bulk deletes keep the store's load flat.

The limit holds for the whole fleet of workers of a namespace. The deletes of a key are applied only by the owner
of its partition, so each worker paces at its share of the rate: the namespace's rate times the share of the log's
partitions it owns, set again on every rebalance (``DeletePacer.assign``). No coordination service is needed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

from streams.model import Op
from streams.ports import Sink, SinkResult, SinkWrite


def fleet_share(owned: int, partitions: int) -> float:
    """This worker's share of a namespace's delete rate when it owns ``owned`` of the log's ``partitions``."""
    if partitions < 1 or not 0 <= owned <= partitions:
        raise ValueError(f"cannot own {owned} of {partitions} partitions")
    return owned / partitions


class DeletePacer:
    """Hands out slots at ``fleet_rate * share`` per second, shared by every event loop of the process
    (thread-safe). The share is 1 until the first assignment says otherwise."""

    def __init__(self, fleet_rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if fleet_rate <= 0:
            raise ValueError("rate must be positive")
        self.fleet_rate = fleet_rate
        self.share = 1.0
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        """Deletes per second this process may send now."""
        return self.fleet_rate * self.share

    def assign(self, owned: int, partitions: int) -> None:
        """A rebalance gave this worker ``owned`` of the log's ``partitions``. With none, the share stays as it
        was: no new deletes reach this worker, and a batch still under way from before the rebalance finishes
        at the pace it started with (its partitions' new owners are still recovering their state)."""
        share = fleet_share(owned, partitions)
        if share > 0:
            with self._lock:
                self.share = share

    def reserve(self, count: int) -> float:
        """Reserve ``count`` slots; returns how long to wait before using the first of them."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + count / (self.fleet_rate * self.share)
            return start - now


class Throttled:
    """A sink whose deletes go out in small steps of at most a twentieth of a second's worth, each on its slot
    (so no one-second window sees more than the rate plus one step). ``count(n)`` is told how many deletes the
    target took."""

    def __init__(self, sink: Sink, pacer: DeletePacer, count: Callable[[int], None] = lambda n: None) -> None:
        self.name = sink.name
        self._sink = sink
        self._pacer = pacer
        self._count = count

    async def ensure_schema(self) -> None:
        await self._sink.ensure_schema()

    async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
        if not any(w.op is Op.DELETE for w in writes):
            return await self._sink.write(writes)
        step = max(1, int(self._pacer.rate / 20))
        results: list[SinkResult] = []
        chunk: list[SinkWrite] = []
        deletes = 0
        for w in writes:
            chunk.append(w)
            deletes += w.op is Op.DELETE
            if deletes == step:
                results += await self._paced(chunk, deletes)
                chunk, deletes = [], 0
        if chunk:
            results += await self._paced(chunk, deletes)
        return results

    async def _paced(self, chunk: list[SinkWrite], deletes: int) -> list[SinkResult]:
        wait = self._pacer.reserve(deletes) if deletes else 0.0
        if wait > 0:
            await asyncio.sleep(wait)
        results = await self._sink.write(chunk)
        if deletes:
            self._count(sum(1 for w, r in zip(chunk, results, strict=True) if w.op is Op.DELETE and r.outcome.ok))
        return results

    async def close(self) -> None:
        await self._sink.close()
