"""A circuit breaker around a sink: while a target is down, fail fast instead of waiting on every batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from streams.core.dependencies import Dependencies
from streams.ports import Outcome, Sink, SinkResult, SinkWrite

log = logging.getLogger(__name__)


class Breaker:
    """Opens when a whole batch failed as retryable (the target looks unavailable). While open, writes fail at
    once as retryable, so other targets keep their pace and the entries go to a retry tier. The open period
    doubles while trial batches keep failing, up to ``max_open_s``, and closes on the first success.

    An outage is told once: a WARNING when the target stops answering, a reminder at most every
    ``remind_s`` while it lasts, and a WARNING with its duration when it answers again. Nothing here needs a
    person: the entries wait in the retry tiers. Given ``dependencies`` and the store's name (``dependency``),
    the story is told there instead, once for every target on that store."""

    def __init__(
        self,
        sink: Sink,
        open_s: float = 1.0,
        max_open_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        namespace: str = "",
        remind_s: float = 30.0,
        dependencies: Dependencies | None = None,
        dependency: str = "",
    ) -> None:
        self._dependencies = dependencies
        self._dependency = dependency or sink.name
        self.name = sink.name
        self._sink = sink
        self._base = open_s
        self._max = max_open_s
        self._clock = clock
        self._namespace = namespace
        self._remind_s = remind_s
        self._open_for = open_s
        self._open_until = 0.0
        self._last_error = ""
        self._down_since: float | None = None
        self._reminded = 0.0

    @property
    def is_open(self) -> bool:
        return self._clock() < self._open_until

    @property
    def down_since(self) -> float | None:
        """When (on the breaker's clock) the current outage began; None while the target answers."""
        return self._down_since

    async def ensure_schema(self) -> None:
        await self._sink.ensure_schema()

    async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
        if self.is_open:
            return [SinkResult(Outcome.RETRYABLE, f"{self.name}: circuit open after: {self._last_error}")] * len(writes)
        results = await self._sink.write(writes)
        if results and all(r.outcome is Outcome.RETRYABLE for r in results):
            self._last_error = results[0].error
            now = self._clock()
            self._open_until = now + self._open_for
            self._open_for = min(self._open_for * 2, self._max)
            self._tell_down(now)
        elif any(r.outcome.ok for r in results):
            self._open_for = self._base
            self._tell_up()
        return results

    def _tell_down(self, now: float) -> None:
        if self._dependencies is not None:
            self._down_since = self._down_since or now
            self._dependencies.down(self._dependency, self._last_error)
            return
        extra = {"namespace": self._namespace, "target": self.name}
        if self._down_since is None:
            self._down_since = self._reminded = now
            log.warning(
                "target %s is not answering (%s); its entries wait in the retry tiers",
                self.name,
                self._last_error,
                extra=extra,
            )
        elif now - self._reminded >= self._remind_s:
            self._reminded = now
            log.warning(
                "target %s is still not answering after %.0fs (%s)",
                self.name,
                now - self._down_since,
                self._last_error,
                extra=extra,
            )

    def _tell_up(self) -> None:
        if self._dependencies is not None:
            self._down_since = None
            self._dependencies.up(self._dependency)
            return
        if self._down_since is not None:
            log.warning(
                "target %s answers again after an outage of %.0fs",
                self.name,
                self._clock() - self._down_since,
                extra={"namespace": self._namespace, "target": self.name},
            )
            self._down_since = None

    async def close(self) -> None:
        await self._sink.close()
