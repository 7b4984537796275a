"""Applies a namespace's entries and makes every outcome durable: applied with its change event, retried or dead."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streams import topics
from streams.codec import Codec, DecodeError
from streams.core.dispatch import Dispatcher, DispatchResult, KeyState
from streams.core.routing import Router
from streams.core.schedule import RetrySchedule, due_ms
from streams.core.versions import MAX_REPLICATED_SEQUENCE, replicated_version
from streams.metrics import Metrics
from streams.model import ChangeOp, Origin, WalEntry
from streams.ports import Delivery, Durable, Outgoing, Producer
from streams.tracing import kafka_trace_headers

log = logging.getLogger(__name__)

#: The futures of a batch's follow-up records: one answer each, or one list of answers for a bulk send.
Sends = list[asyncio.Future[Delivery] | asyncio.Future[list[Delivery]]]


@dataclass(frozen=True, slots=True)
class Record:
    """What the pipeline needs of a consumed log record (built from a Faust event, or by a test). An entry a
    retry tier handed back carries its attempts so far and its first error."""

    key: bytes | None
    value: bytes
    origin: Origin
    attempt: int = 0
    first_error: str | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """An entry to apply now, with where it came from and its retry history (attempt 0: never tried)."""

    entry: WalEntry
    raw: bytes
    origin: Origin
    attempt: int = 0
    first_error: str | None = None


class NotDurable(RuntimeError):
    """A CDC, retry or DLQ record could not be stored: the batch must not be acknowledged."""


async def settle(sends: Sends) -> None:
    """Wait for follow-up records; raise NotDurable unless every one is stored."""
    deliveries: list[Delivery] = []
    answers: list[Delivery | list[Delivery]] = await asyncio.gather(*sends)
    for answer in answers:
        if isinstance(answer, Delivery):
            deliveries.append(answer)
        else:
            deliveries.extend(answer)
    lost = [d for d in deliveries if d.durable is not Durable.TRUE]
    if lost:
        raise NotDurable(f"{len(lost)} of {len(deliveries)} follow-up records were not stored: {lost[0].message}")


class Applier:
    """Applies entries of one namespace. Each call appends the future of every follow-up record it sends (change
    event, retry envelope, dead letter) to ``sends``; the caller acknowledges only once ``settle(sends)`` passed."""

    def __init__(
        self,
        namespace: str,
        dispatcher: Dispatcher,
        router: Router,
        producer: Producer,
        codec: Codec,
        metrics: Metrics,
        schedule: RetrySchedule,
        hold_s: float = 30.0,
        origin_rank: Callable[[str], int] | None = None,
        origin_region: Callable[[str], str] | None = None,
    ) -> None:
        """``origin_rank``: for a replicated namespace, the rank of the region whose log a topic is; the store
        version of its entries is then the composite of ``core/versions.py``."""
        self.namespace = namespace
        self.dispatcher = dispatcher
        self.router = router
        self._producer = producer
        self._codec = codec
        self._metrics = metrics
        self._schedule = schedule
        self._hold_s = hold_s
        self._cdc = topics.cdc_topic(namespace)
        self._origin_rank = origin_rank
        self._origin_region = origin_region

    def decode(self, record: Record) -> WalEntry | DecodeError:
        """The entry of a log record, or why it is not one of this namespace."""
        try:
            entry = self._codec.decode_entry(record.value)
        except DecodeError as exc:
            return exc
        if entry.namespace != self.namespace:
            return DecodeError(
                "unknown-namespace", f"entry names namespace {entry.namespace!r}, read from {record.origin.topic}"
            )
        if self._origin_rank is not None and entry.sequence > MAX_REPLICATED_SEQUENCE:
            return DecodeError(
                "invalid-record",
                f"sequence {entry.sequence} is above {MAX_REPLICATED_SEQUENCE}, the largest a replicated "
                "namespace takes (its store version would overflow)",
            )
        return entry

    def versions(self, items: Sequence[Pending]) -> list[int] | None:
        """The store versions of ``items``: None (their sequences) unless the namespace is replicated."""
        rank = self._origin_rank
        if rank is None:
            return None
        return [replicated_version(i.entry.sequence, rank(i.origin.topic)) for i in items]

    async def dead_letter_undecodable(self, failures: Sequence[tuple[Record, DecodeError]], sends: Sends) -> None:
        """Send undecodable records to the DLQ, holding the stream while the flood guard refuses them."""
        for record, error in failures:

            async def nothing() -> None:
                return None

            # One at a time: a flood drains at the limit, never faster.
            await self.router.guard.admitted(nothing, lambda _: 1, self._hold_s)
            origin = record.origin
            log.warning(
                "undecodable record sent to the DLQ: %s",
                error,
                extra={
                    "namespace": self.namespace,
                    "topic": origin.topic,
                    "partition": origin.partition,
                    "offset": origin.offset,
                },
            )
            sends.append(self.router.undecodable(record.value, record.key, origin, error))

    def delay_if_not_due(self, item: Pending, sends: Sends) -> bool:
        """Send a delayed entry that is not due yet to its next tier; True when it was sent."""
        due = due_ms(item.entry)
        if not due:
            return False
        hop = self._schedule.toward(due, int(time.time() * 1000))
        if hop is None:
            return False
        sends.append(self.router.delayed(item.entry, item.origin, hop, item.attempt))
        return True

    async def apply(self, items: Sequence[Pending], state: dict[str, KeyState], sends: Sends) -> dict[str, KeyState]:
        """Apply, publish and route; returns the new idempotency state of the keys touched."""
        metrics, ns = self._metrics, self.namespace
        entries = [i.entry for i in items]
        versions = self.versions(items)

        async def dispatch() -> DispatchResult:
            started = time.perf_counter()
            result = await self.dispatcher.dispatch(entries, state, versions)
            metrics.child(metrics.sink_latency, ns).observe(time.perf_counter() - started)
            return result

        def dead_letters(result: DispatchResult) -> int:
            return self.router.dead_letters_needed(
                [(o, i.attempt + 1) for o, i in zip(result.outcomes, items, strict=True)]
            )

        result = await self.router.guard.admitted(dispatch, dead_letters, self._hold_s)
        self._route(result, items, sends)
        return result.state

    def _route(self, result: DispatchResult, items: Sequence[Pending], sends: Sends) -> None:
        """Publish a change event for each entry that changed its key, route the failures, count everything."""
        metrics, ns = self._metrics, self.namespace
        # Counted per batch, then added to the counters once per label set.
        applied: collections.Counter[tuple[str, ...]] = collections.Counter()
        skipped: collections.Counter[tuple[str, ...]] = collections.Counter()
        counts: collections.Counter[tuple[str, str]] = collections.Counter()  # (target, outcome)
        changes: collections.Counter[str] = collections.Counter()
        results: collections.Counter[str] = collections.Counter()
        end_to_end = metrics.child(metrics.end_to_end, ns)
        now = time.time()
        now_ms = int(now * 1000)
        events: list[Outgoing] = []
        for outcome, item in zip(result.outcomes, items, strict=True):
            results[outcome.result] += 1
            if outcome.applied:
                applied[outcome.applied] += 1
            if outcome.skipped:
                skipped[outcome.skipped] += 1
            if outcome.failed:
                for target, res in outcome.failed.items():
                    counts[(target, res.outcome.value)] += 1
                sends.append(self.router.failed(outcome, item.raw, item.origin, item.attempt + 1, item.first_error))
            elif outcome.change is not None:
                entry = outcome.entry
                events.append(self._event(entry, outcome.change, item.origin, now_ms))
                changes[outcome.change.value] += 1
                end_to_end.observe(max(now - entry.lifecycle.original_write_time / 1e6, 0.0))
                due = due_ms(entry)
                if due:
                    metrics.child(metrics.delay_lateness, ns).observe(max(now - due / 1000, 0.0))
        if self._origin_region is not None:
            self._count_origins(result, items, now)
        for outcomes, label in ((applied, "applied"), (skipped, "skipped")):
            for targets, count in outcomes.items():
                for target in targets:
                    counts[(target, label)] += count
        for (target, label), count in counts.items():
            metrics.child(metrics.entries, ns, target, label).inc(count)
        for op, count in changes.items():
            metrics.child(metrics.changes, ns, op).inc(count)
        for outcome_result, count in results.items():
            metrics.child(metrics.entry_results, ns, outcome_result).inc(count)
        if events:
            sends.append(self._producer.send_many(events))

    def _count_origins(self, result: DispatchResult, items: Sequence[Pending], now: float) -> None:
        """Entries done per origin region, and each origin's lag as of its newest entry of the batch."""
        assert self._origin_region is not None
        metrics, ns = self._metrics, self.namespace
        done: collections.Counter[str] = collections.Counter()
        newest: dict[str, int] = {}
        for outcome, item in zip(result.outcomes, items, strict=True):
            if outcome.failed:
                continue
            region = self._origin_region(item.origin.topic)
            done[region] += 1
            written = item.entry.lifecycle.original_write_time
            newest[region] = max(newest.get(region, 0), written)
        for region, count in done.items():
            metrics.child(metrics.replicated_entries, ns, region).inc(count)
            metrics.child(metrics.replication_lag, ns, region).set(max(now - newest[region] / 1e6, 0.0))

    def _event(self, entry: WalEntry, change: ChangeOp, origin: Origin, now_ms: int) -> Outgoing:
        """The change event announcing ``entry``, keyed like it, with its trace context."""
        value = self._codec.encode_change(entry, origin, now_ms, change)
        return Outgoing(self._cdc, entry.key.encode(), value, kafka_trace_headers(entry.headers))
