"""Sends whatever is not applied now to the one place it belongs: a retry tier or the dead-letter topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

from streams import topics
from streams.codec import Codec, DecodeError
from streams.core.dispatch import EntryOutcome
from streams.core.flood import FloodGuard
from streams.core.schedule import Hop, RetrySchedule, due_ms
from streams.metrics import Metrics
from streams.model import (
    ATTEMPT_HEADER,
    FIRST_ERROR_HEADER,
    DeadLetter,
    ErrorClass,
    Origin,
    RetryEnvelope,
    WalEntry,
)
from streams.ports import Delivery, Producer
from streams.tracing import kafka_trace_headers

#: The first error travels in a header; a longer one is cut (the retry envelope and the DLQ keep it whole).
_MAX_ERROR_HEADER = 1000


def retry_history(headers: Iterable[tuple[str, bytes | None]]) -> tuple[int, str | None]:
    """The attempts made so far and the first error of a log record a retry tier handed back (0 and None for an
    entry's first delivery)."""
    attempt, first_error = 0, None
    for name, value in headers:
        if name == ATTEMPT_HEADER and value and value.isdigit():
            attempt = int(value)
        elif name == FIRST_ERROR_HEADER and value is not None:
            first_error = value.decode("utf-8", "replace")
    return attempt, first_error


class Router:
    """Sends whatever is not applied now to the one place it belongs, each send the future of its durable answer:
    a failed entry to a retry tier or the DLQ, a delayed entry to the tier it waits in, and an entry whose wait
    is over back to the namespace's log, where the key's owner decides what it changes (one writer per key)."""

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
        self._log = topics.wal_topic(namespace)

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

    def when_due(self, envelope: RetryEnvelope, now_ms: int) -> asyncio.Future[Delivery]:
        """An envelope whose tier time is over: a delayed entry that is still not due moves on to its next tier;
        anything else goes back to the log."""
        if envelope.attempt == 0:
            hop = self._schedule.toward(due_ms(envelope.entry), now_ms)
            if hop is not None:
                return self.delayed(envelope.entry, envelope.origin, hop)
        return self.hand_back(envelope)

    def hand_back(self, envelope: RetryEnvelope) -> asyncio.Future[Delivery]:
        """Write the entry back to its log, on its key's partition, with its retry history in headers. The entry
        is unchanged (same id, sequence and targets): the owner's idempotency table knows which targets still
        need it, and whether a newer version overtook it meanwhile."""
        history: list[tuple[str, bytes]] = []
        if envelope.attempt:
            history.append((ATTEMPT_HEADER, str(envelope.attempt).encode()))
            history.append((FIRST_ERROR_HEADER, envelope.first_error[:_MAX_ERROR_HEADER].encode()))
        record = self._codec.log_record(envelope.entry, history)
        # Back to the log it was read from: an entry replicated from another region (``east.wal.<ns>``) stays
        # that region's, and is never replicated again from this region's own log.
        source = envelope.origin.topic
        topic = source if source.endswith("." + record.topic) else record.topic
        return self._producer.send_nowait(
            topic, record.key, record.value, record.headers, partition=envelope.origin.partition
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
