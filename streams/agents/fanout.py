"""The fan-out step for one namespace: decode → dispatch → route → ack, a batch at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.kafka.producer import Delivery, Durable
from streams import topics
from streams.codec import Codec, DecodeError
from streams.dispatch import Dispatcher, KeyState
from streams.metrics import Metrics
from streams.model import ChangeEvent, ChangeOp, Op, Origin, Source, WalEntry
from streams.retry import RetrySchedule, due_ms
from streams.routing import FloodGuardTripped, Router, Sender

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """What the processor needs of a consumed Kafka record (built from a Faust event, or by a test)."""

    key: bytes | None
    value: bytes
    origin: Origin


class NotDurable(RuntimeError):
    """A CDC, retry or DLQ record could not be stored: the batch must not be acknowledged."""


@dataclass(frozen=True, slots=True)
class Pending:
    """An entry to apply now, with where it came from and its retry history (attempt 0: never tried)."""

    entry: WalEntry
    raw: bytes
    origin: Origin
    attempt: int = 0
    first_error: str | None = None


class Applier:
    """Applies entries of one namespace and returns only once every outcome is durable: applied with its change
    event published, or sent to a retry tier, or to the DLQ. Shared by the fan-out agent and the retry runner."""

    def __init__(
        self,
        namespace: str,
        dispatcher: Dispatcher,
        router: Router,
        producer: Sender,
        codec: Codec,
        metrics: Metrics,
        schedule: RetrySchedule,
        hold_s: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self.dispatcher = dispatcher
        self.router = router
        self._producer = producer
        self._codec = codec
        self._metrics = metrics
        self._schedule = schedule
        self._hold_s = hold_s
        self._cdc = topics.cdc_topic(namespace)

    def decode(self, record: Record, sends: list[asyncio.Future[Delivery]]) -> WalEntry | None:
        """The entry of a log record, or None after sending the record to the DLQ."""
        try:
            entry = self._codec.decode_entry(record.value)
        except DecodeError as exc:
            log.warning("undecodable record at %s: %s", record.origin, exc)
            sends.append(self.router.undecodable(record.value, record.key, record.origin, exc))
            return None
        if entry.namespace != self.namespace:
            error = DecodeError(
                "unknown-namespace", f"entry names namespace {entry.namespace!r}, read from {record.origin.topic}"
            )
            sends.append(self.router.undecodable(record.value, record.key, record.origin, error))
            return None
        return entry

    def delay_if_not_due(self, item: Pending, sends: list[asyncio.Future[Delivery]]) -> bool:
        """Send a delayed entry that is not due yet to its next tier; True when it was sent."""
        due = due_ms(item.entry)
        if not due:
            return False
        hop = self._schedule.toward(due, int(time.time() * 1000))
        if hop is None:
            return False
        sends.append(self.router.delayed(item.entry, item.origin, hop, item.attempt))
        return True

    async def apply(
        self,
        items: Sequence[Pending],
        state: Mapping[str, KeyState],
        sends: list[asyncio.Future[Delivery]],
    ) -> dict[str, KeyState]:
        """Apply, publish and route; returns the new idempotency state of the keys touched."""
        while True:
            started = time.perf_counter()
            result = await self.dispatcher.dispatch([i.entry for i in items], state)
            self._metrics.sink_latency.labels(self.namespace).observe(time.perf_counter() - started)
            doomed = self.router.dead_letters_needed(
                [(o, i.attempt + 1) for o, i in zip(result.outcomes, items, strict=True)]
            )
            try:
                self.router.guard.admit(doomed)
                break
            except FloodGuardTripped as exc:
                self._metrics.paused.labels(self.namespace).set(1)
                log.error("%s; trying the same entries again in %.0fs", exc, self._hold_s)
                await asyncio.sleep(self._hold_s)
        self._metrics.paused.labels(self.namespace).set(0)

        now = time.time()
        for outcome, item in zip(result.outcomes, items, strict=True):
            self._count(outcome.applied, "applied")
            self._count(outcome.skipped, "skipped")
            if outcome.duplicate:
                self._metrics.duplicates.labels(self.namespace).inc()
            if outcome.failed:
                for target, res in outcome.failed.items():
                    self._metrics.entries.labels(self.namespace, target, res.outcome.value).inc()
                sends.append(self.router.failed(outcome, item.raw, item.origin, item.attempt + 1, item.first_error))
            elif outcome.change is not None:
                sends.append(self._publish(outcome.entry, outcome.change, item.origin, int(now * 1000)))
                self._metrics.end_to_end.labels(self.namespace).observe(
                    max(now - outcome.entry.lifecycle.original_write_time / 1e6, 0.0)
                )
                due = due_ms(outcome.entry)
                if due:
                    self._metrics.delay_lateness.labels(self.namespace).observe(max(now - due / 1000, 0.0))
        return result.state

    def _publish(self, entry: WalEntry, change: ChangeOp, origin: Origin, now_ms: int) -> asyncio.Future[Delivery]:
        event = ChangeEvent(
            op=change,
            key=entry.key,
            after=None if entry.op is Op.DELETE else entry.payload,
            source=Source(
                self.namespace, origin.topic, origin.partition, origin.offset, entry.sequence, entry.entry_id
            ),
            ts_ms=now_ms,
        )
        self._metrics.changes.labels(self.namespace, change.value).inc()
        return self._producer.send_nowait(self._cdc, entry.key.encode(), self._codec.encode_change_event(event))

    def _count(self, targets: Sequence[str], outcome: str) -> None:
        for target in targets:
            self._metrics.entries.labels(self.namespace, target, outcome).inc()


async def settle(sends: Sequence[asyncio.Future[Delivery]]) -> None:
    """Wait for follow-up records; raise NotDurable unless every one is stored."""
    deliveries = await asyncio.gather(*sends)
    lost = [d for d in deliveries if d.durable is not Durable.TRUE]
    if lost:
        raise NotDurable(f"{len(lost)} of {len(deliveries)} follow-up records were not stored: {lost[0].message}")


class FanoutProcessor:
    """The fan-out agent's step for one namespace: decode → delay or dispatch → route → (caller acks)."""

    def __init__(self, applier: Applier, table: MutableMapping[bytes, Any]) -> None:
        self.namespace = applier.namespace
        self._applier = applier
        self._table = table

    async def process(self, records: Sequence[Record]) -> None:
        sends: list[asyncio.Future[Delivery]] = []
        items: list[Pending] = []
        for record in records:
            entry = self._applier.decode(record, sends)
            if entry is None:
                continue
            item = Pending(entry, record.value, record.origin)
            if not self._applier.delay_if_not_due(item, sends):
                items.append(item)
        state = {i.entry.key: KeyState.from_json(self._table.get(i.entry.key.encode())) for i in items}
        new_state = await self._applier.apply(items, state, sends) if items else {}
        await settle(sends)
        for key, new in new_state.items():
            if new != state.get(key):
                self._table[key.encode()] = new.to_json()


class Batcher:
    """Collects records into batches of at most ``max_size``, flushed when full or ``within`` seconds after the
    first record arrived. A flush processes the batch, then acknowledges it; the adder waits while a full batch
    is being flushed, so memory stays bounded (backpressure pauses consumption)."""

    def __init__(
        self,
        process: Callable[[list[Any]], Awaitable[None]],
        ack: Callable[[list[Any]], Awaitable[None]],
        max_size: int,
        within: float,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._process = process
        self._ack = ack
        self._max = max_size
        self._within = within
        self._on_fatal = on_fatal
        self._buffer: list[Any] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(self, item: Any) -> None:
        self._buffer.append(item)
        if len(self._buffer) >= self._max:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._within, self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch, self._buffer = self._buffer, []
            if not batch:
                return
            try:
                await self._process(batch)
            except BaseException as exc:
                # Nothing of this batch is acknowledged; the process stops so the records are read again.
                self._on_fatal(exc)
                raise
            await self._ack(batch)
