"""Whether the systems a process needs answer: one story per outage, in the log and in the metrics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from streams.metrics import Metrics

log = logging.getLogger(__name__)


class Dependencies:
    """The state of each dependency (``kafka``, ``cassandra``, ``elasticsearch``) as its clients last saw it.

    Clients report every failed and every successful call (``down``, ``up``); an outage is told once: a WARNING
    when the dependency stops answering, a reminder at most every ``remind_s`` while it lasts, and a WARNING
    with its duration when it answers again. Nothing here needs a person: entries wait in the log or in the
    retry tiers until it is back. The gauge ``walstream_dependency_up`` follows, and each outage is counted
    with its seconds. Thread-safe: the liveness thread reports Kafka, the event loop the stores."""

    def __init__(
        self,
        metrics: Metrics,
        names: Iterable[str] = (),
        remind_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._remind_s = remind_s
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: dict[str, float] = {}
        self._reminded: dict[str, float] = {}
        self._known: set[str] = set()
        for name in names:
            self._know(name)

    def _know(self, name: str) -> None:
        if name not in self._known:
            self._known.add(name)
            self._metrics.dependency_up.labels(name).set(1)
            self._metrics.dependency_outages.labels(name)  # exported at 0 before the first outage
            self._metrics.dependency_down_seconds.labels(name)

    def down(self, name: str, reason: str) -> None:
        with self._lock:
            self._know(name)
            now = self._clock()
            since = self._down_since.get(name)
            if since is None:
                self._down_since[name] = self._reminded[name] = now
                self._metrics.dependency_up.labels(name).set(0)
                self._metrics.dependency_outages.labels(name).inc()
                log.warning("%s is not answering (%s); entries wait until it is back", name, reason)
            elif now - self._reminded[name] >= self._remind_s:
                self._reminded[name] = now
                log.warning("%s is still not answering after %.0fs (%s)", name, now - since, reason)

    def up(self, name: str) -> None:
        with self._lock:
            self._know(name)
            since = self._down_since.pop(name, None)
            if since is None:
                return
            took = self._clock() - since
            self._metrics.dependency_up.labels(name).set(1)
            self._metrics.dependency_down_seconds.labels(name).inc(took)
            log.warning("%s answers again after an outage of %.0fs", name, took)

    def state(self) -> dict[str, dict[str, object]]:
        """Per dependency: up, and for how long it has not answered."""
        with self._lock:
            now = self._clock()
            return {
                name: {"up": name not in self._down_since}
                | ({"down_for_s": round(now - self._down_since[name], 1)} if name in self._down_since else {})
                for name in sorted(self._known)
            }

    @property
    def all_up(self) -> bool:
        with self._lock:
            return not self._down_since
