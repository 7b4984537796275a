"""Sends whatever is not applied now to the one place it belongs: a retry tier or the dead-letter topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from streams import topics
from streams.codec import Codec, DecodeError
from streams.core.dispatch import EntryOutcome
from streams.core.flood import FloodGuard
from streams.core.schedule import Hop, RetrySchedule
from streams.metrics import Metrics
from streams.model import DeadLetter, ErrorClass, Origin, RetryEnvelope, WalEntry
from streams.ports import Delivery, Producer
from streams.tracing import kafka_trace_headers


class Router:
    """Builds and sends the retry envelope or dead letter of an entry that was not applied, and the tier hop of a
    delayed entry; each send returns the future of its durable answer."""

    def __init__(
        self,
        namespace: str,
        all_targets: Sequence[str],
        schedule: RetrySchedule,
        producer: Producer,
        codec: Codec,
        metrics: Metrics,
        guard: FloodGuard,
    ) -> None:
        self.namespace = namespace
        self._all_targets = tuple(all_targets)
        self._schedule = schedule
        self._producer = producer
        self._codec = codec
        self._metrics = metrics
        self.guard = guard
        self._dlq = topics.dlq_topic(namespace)

    def dead_letters_needed(self, outcomes: Sequence[tuple[EntryOutcome, int]]) -> int:
        """How many of these (outcome, attempt) pairs would go to the DLQ (for the flood guard)."""
        return sum(1 for outcome, attempt in outcomes if outcome.failed and self._gives_up(outcome, attempt))

    def _gives_up(self, outcome: EntryOutcome, attempt: int) -> bool:
        return outcome.fatal or self._schedule.after_failure(attempt, 0) is None

    def failed(
        self,
        outcome: EntryOutcome,
        raw: bytes,
        origin: Origin,
        attempt: int,
        first_error: str | None = None,
    ) -> asyncio.Future[Delivery]:
        """After the ``attempt``-th failed try: the next retry tier, or the DLQ when fatal or out of attempts."""
        now_ms = int(time.time() * 1000)
        hop = None if outcome.fatal else self._schedule.after_failure(attempt, now_ms)
        reasons = "; ".join(r.error for r in outcome.failed.values()) or "failed"
        if hop is None:
            error_class = ErrorClass.FATAL if outcome.fatal else ErrorClass.EXHAUSTED
            letter = DeadLetter(
                raw=raw,
                entry=outcome.entry,
                reason=reasons if first_error is None else f"{reasons} (first error: {first_error})",
                error_class=error_class.value,
                attempts=attempt,
                pending_targets=outcome.pending_targets,
                origin=origin,
                failed_at_ms=now_ms,
            )
            return self._dead_letter(outcome.entry.key.encode(), letter)
        envelope = RetryEnvelope(
            entry=outcome.entry,
            attempt=attempt,
            due_ms=hop.due_ms,
            pending_targets=outcome.pending_targets,
            first_error=first_error or reasons,
            last_error=reasons,
            origin=origin,
            tier=hop.tier,
        )
        return self._to_tier(outcome.entry, envelope, hop, origin)

    def delayed(self, entry: WalEntry, origin: Origin, hop: Hop, attempt: int = 0) -> asyncio.Future[Delivery]:
        """A delayed entry waits in ``hop``'s tier; attempt 0 means it was never tried."""
        envelope = RetryEnvelope(
            entry=entry,
            attempt=attempt,
            due_ms=hop.due_ms,
            pending_targets=entry.targets or self._all_targets,
            first_error="",
            last_error="",
            origin=origin,
            tier=hop.tier,
        )
        return self._to_tier(entry, envelope, hop, origin, delayed=True)

    def _to_tier(
        self, entry: WalEntry, envelope: RetryEnvelope, hop: Hop, origin: Origin, delayed: bool = False
    ) -> asyncio.Future[Delivery]:
        if not delayed:
            self._metrics.retries.labels(self.namespace, hop.tier).inc()
        headers = [*([("walstream-delayed", b"1")] if delayed else []), *kafka_trace_headers(entry.headers)]
        return self._producer.send_nowait(
            topics.retry_topic(self.namespace, hop.tier),
            entry.key.encode(),
            self._codec.encode_retry_envelope(envelope),
            headers=headers,
            # Same partition number as in the log: the key's owner keeps owning it.
            partition=origin.partition,
        )

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

    def _dead_letter(
        self, key: bytes | None, letter: DeadLetter, headers: Sequence[tuple[str, bytes]] = ()
    ) -> asyncio.Future[Delivery]:
        self._metrics.dead_letters.labels(self.namespace, letter.error_class).inc()
        return self._producer.send_nowait(self._dlq, key, self._codec.encode_dead_letter(letter), headers=list(headers))
