"""A circuit breaker around a sink: while a target is down, fail fast instead of waiting on every batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from streams.ports import Outcome, Sink, SinkResult, SinkWrite


class Breaker:
    """Opens when a whole batch failed as retryable (the target looks unavailable). While open, writes fail at
    once as retryable, so other targets keep their pace and the entries go to a retry tier. The open period
    doubles while trial batches keep failing, up to ``max_open_s``, and closes on the first success."""

    def __init__(
        self,
        sink: Sink,
        open_s: float = 1.0,
        max_open_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = sink.name
        self._sink = sink
        self._base = open_s
        self._max = max_open_s
        self._clock = clock
        self._open_for = open_s
        self._open_until = 0.0
        self._last_error = ""

    @property
    def is_open(self) -> bool:
        return self._clock() < self._open_until

    async def ensure_schema(self) -> None:
        await self._sink.ensure_schema()

    async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
        if self.is_open:
            return [SinkResult(Outcome.RETRYABLE, f"{self.name}: circuit open after: {self._last_error}")] * len(writes)
        results = await self._sink.write(writes)
        if results and all(r.outcome is Outcome.RETRYABLE for r in results):
            self._last_error = results[0].error
            self._open_until = self._clock() + self._open_for
            self._open_for = min(self._open_for * 2, self._max)
        elif any(r.outcome.ok for r in results):
            self._open_for = self._base
        return results

    async def close(self) -> None:
        await self._sink.close()
