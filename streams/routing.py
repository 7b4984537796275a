"""Sends whatever could not be applied to the one place it belongs: a retry tier or the dead-letter topic."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from connectors.kafka.producer import Delivery
from streams import topics
from streams.codec import Codec, DecodeError
from streams.dispatch import EntryOutcome
from streams.metrics import Metrics
from streams.model import DeadLetter, ErrorClass, Origin


class Sender(Protocol):
    def send_nowait(self, topic: str, key: bytes | None, value: bytes | None) -> asyncio.Future[Delivery]: ...


class Router:
    """Until retry tiers are wired in, every failure goes to the DLQ with its reason: never dropped, never blocking."""

    def __init__(self, namespace: str, producer: Sender, codec: Codec, metrics: Metrics) -> None:
        self.namespace = namespace
        self._producer = producer
        self._codec = codec
        self._metrics = metrics
        self._dlq = topics.dlq_topic(namespace)

    def failed(self, outcome: EntryOutcome, raw: bytes, origin: Origin, attempts: int = 1) -> asyncio.Future[Delivery]:
        error_class = ErrorClass.FATAL if outcome.fatal else ErrorClass.EXHAUSTED
        reasons = "; ".join(f"{t}: {r.error}" for t, r in outcome.failed.items())
        letter = DeadLetter(
            raw=raw,
            entry=outcome.entry,
            reason=reasons or "failed",
            error_class=error_class.value,
            attempts=attempts,
            pending_targets=outcome.pending_targets,
            origin=origin,
            failed_at_ms=int(time.time() * 1000),
        )
        return self._dead_letter(outcome.entry.key.encode(), letter)

    def undecodable(
        self, raw: bytes, key: bytes | None, origin: Origin, error: DecodeError
    ) -> asyncio.Future[Delivery]:
        self._metrics.undecodable.labels(self.namespace, error.reason).inc()
        letter = DeadLetter(
            raw=raw,
            entry=None,
            reason=f"{error.reason}: {error}",
            error_class=ErrorClass.UNDECODABLE.value,
            attempts=0,
            pending_targets=(),
            origin=origin,
            failed_at_ms=int(time.time() * 1000),
        )
        return self._dead_letter(key, letter)

    def _dead_letter(self, key: bytes | None, letter: DeadLetter) -> asyncio.Future[Delivery]:
        self._metrics.dead_letters.labels(self.namespace, letter.error_class).inc()
        return self._producer.send_nowait(self._dlq, key, self._codec.encode_dead_letter(letter))
