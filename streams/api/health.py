"""The API process's /healthz and /readyz: whether gRPC listens, and whether its producer reaches Kafka."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Gauge

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class KafkaWatch:
    """Asks Kafka for its metadata every ``interval_s`` from a daemon thread, with the producer the calls use, and
    remembers when it last answered. The gauge (``walstream_api_kafka_up``) follows every answer."""

    def __init__(
        self,
        reaches: Callable[[float], bool],
        gauge: Gauge | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._reaches = reaches
        self._gauge = gauge
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="walstream-api-kafka-watch", daemon=True)
        #: None until the first answer; then whether the last check reached Kafka.
        self.up: bool | None = None
        #: When Kafka last answered (clock time), None if never.
        self.last_reached: float | None = None
        self.started = clock()

    def start(self) -> KafkaWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._timeout_s + 1)

    def check(self) -> bool:
        """One check (the thread calls it; tests may too)."""
        up = self._reaches(self._timeout_s)
        if up:
            self.last_reached = self._clock()
        if up != self.up:
            if up:
                log.info("the API's producer reaches Kafka")
            elif self.up is not None:
                log.warning("the API's producer does not reach Kafka: /readyz answers 503 until it does")
        self.up = up
        if self._gauge is not None:
            self._gauge.set(1 if up else 0)
        return up

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self._interval_s)

    def unreachable_for(self) -> float:
        """Seconds since Kafka last answered (since the watch began, if it never did); 0 while it answers."""
        if self.up:
            return 0.0
        return self._clock() - (self.last_reached if self.last_reached is not None else self.started)


def readiness(listening: bool, draining: bool, kafka_up: bool | None) -> tuple[bool, dict[str, object]]:
    """Ready only while gRPC listens, takes calls, and the producer has Kafka's metadata."""
    kafka = "unchecked" if kafka_up is None else "up" if kafka_up else "unreachable"
    ok = listening and not draining and kafka_up is True
    return ok, {"listening": listening, "draining": draining, "kafka": kafka}


def liveness(unreachable_s: float, limit_s: float) -> tuple[bool, dict[str, object]]:
    """Alive unless the producer has not reached Kafka for longer than ``limit_s``: a restart might help then (a
    wedged client), while a shorter outage is Kafka's and only readiness says so."""
    ok = unreachable_s <= limit_s
    details: dict[str, object] = {"kafka_unreachable_s": round(unreachable_s, 1)}
    if not ok:
        details["reason"] = f"Kafka not reached for {unreachable_s:.0f}s (limit {limit_s:g}s)"
    return ok, details


class ApiHealth:
    """The state behind one API process's /healthz and /readyz; it exists before gRPC listens, so both answer
    (readiness 503) from the first moment."""

    def __init__(self, kafka_unreachable_s: float) -> None:
        self._limit_s = kafka_unreachable_s
        self._watch: KafkaWatch | None = None
        self._draining = False

    def listening(self, watch: KafkaWatch) -> None:
        """gRPC listens; ``watch`` tells whether Kafka answers."""
        self._watch = watch

    def draining(self) -> None:
        """Shutdown began: no longer ready (load balancers stop routing here)."""
        self._draining = True

    def live(self) -> tuple[bool, dict[str, object]]:
        watch = self._watch
        if watch is None:
            return True, {"listening": False}
        return liveness(watch.unreachable_for(), self._limit_s)

    def ready(self) -> tuple[bool, dict[str, object]]:
        watch = self._watch
        return readiness(watch is not None, self._draining, None if watch is None else watch.up)
