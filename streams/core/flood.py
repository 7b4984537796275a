"""The DLQ flood guard: holds a namespace instead of draining its log into the dead-letter topic."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from streams.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class FloodGuardTripped(RuntimeError):
    """More dead letters than the namespace allows per minute: hold the stream instead of draining it."""


class FloodGuard:
    """Counts dead letters over the last minute; ``admit(n)`` refuses when n more would pass the limit.

    A bad deploy or a broken mapping fails every entry: rather than moving the whole log into the DLQ, the
    namespace is held (``holding``, and the ``walstream_namespace_paused`` gauge) until letters may pass again."""

    def __init__(
        self,
        namespace: str,
        per_minute: int,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.per_minute = per_minute
        self._metrics = metrics
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._holding = False

    @property
    def holding(self) -> bool:
        """True while the namespace is held because too many entries went to the DLQ."""
        return self._holding

    def admit(self, count: int) -> None:
        if count <= 0:
            return
        now = self._clock()
        while self._times and self._times[0] <= now - 60:
            self._times.popleft()
        # A batch larger than the whole limit is let through only into an empty window, so it cannot wait forever.
        if len(self._times) + count > self.per_minute and self._times:
            raise FloodGuardTripped(
                f"namespace {self.namespace}: {len(self._times) + count} dead letters within a minute would pass "
                f"the limit of {self.per_minute} (retry.dlq_max_per_minute); holding the stream"
            )
        self._times.extend([now] * count)

    async def admitted(self, attempt: Callable[[], Awaitable[T]], dead_letters: Callable[[T], int], hold_s: float) -> T:
        """Run ``attempt`` until the dead letters its result needs are admitted, holding ``hold_s`` seconds
        between tries; returns the admitted result. Each try runs afresh, since a store may have recovered."""
        while True:
            result = await attempt()
            try:
                self.admit(dead_letters(result))
            except FloodGuardTripped as exc:
                self._hold(True)
                log.error("%s; trying again in %.0fs", exc, hold_s, extra={"namespace": self.namespace})
                await asyncio.sleep(hold_s)
                continue
            self._hold(False)
            return result

    def _hold(self, holding: bool) -> None:
        self._holding = holding
        if self._metrics is not None:
            self._metrics.child(self._metrics.paused, self.namespace).set(int(holding))
