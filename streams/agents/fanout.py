"""The fan-out step for one namespace: decode → dispatch → route → ack, a batch at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.kafka.producer import Delivery, Durable
from streams import topics
from streams.codec import Codec, DecodeError
from streams.dispatch import Dispatcher, KeyState
from streams.metrics import Metrics
from streams.model import ChangeEvent, Origin, Source, WalEntry
from streams.routing import Router, Sender

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """What the processor needs of a consumed Kafka record (built from a Faust event, or by a test)."""

    key: bytes | None
    value: bytes
    origin: Origin


class NotDurable(RuntimeError):
    """A CDC, retry or DLQ record could not be stored: the batch must not be acknowledged."""


class FanoutProcessor:
    """Applies a batch of records of one namespace and returns only once every outcome is durable.

    The caller acknowledges the batch's offsets after `process` returns, and never when it raises.
    """

    def __init__(
        self,
        namespace: str,
        dispatcher: Dispatcher,
        table: MutableMapping[bytes, Any],
        producer: Sender,
        codec: Codec,
        metrics: Metrics,
    ) -> None:
        self.namespace = namespace
        self._dispatcher = dispatcher
        self._table = table
        self._producer = producer
        self._codec = codec
        self._metrics = metrics
        self._router = Router(namespace, producer, codec, metrics)
        self._cdc = topics.cdc_topic(namespace)

    async def process(self, records: Sequence[Record]) -> None:
        entries: list[WalEntry] = []
        sources: list[Record] = []
        sends: list[asyncio.Future[Delivery]] = []
        for record in records:
            try:
                entry = self._codec.decode_entry(record.value)
            except DecodeError as exc:
                log.warning("undecodable record at %s: %s", record.origin, exc)
                sends.append(self._router.undecodable(record.value, record.key, record.origin, exc))
                continue
            if entry.namespace != self.namespace:
                error = DecodeError(
                    "unknown-namespace", f"entry names namespace {entry.namespace!r}, read from {record.origin.topic}"
                )
                sends.append(self._router.undecodable(record.value, record.key, record.origin, error))
                continue
            entries.append(entry)
            sources.append(record)

        state = {e.key: KeyState.from_json(self._table.get(e.key.encode())) for e in entries}
        started = time.perf_counter()
        result = await self._dispatcher.dispatch(entries, state)
        self._metrics.sink_latency.labels(self.namespace).observe(time.perf_counter() - started)

        now_ms = int(time.time() * 1000)
        for outcome, record in zip(result.outcomes, sources, strict=True):
            self._count(outcome.applied, "applied")
            self._count(outcome.skipped, "skipped")
            if outcome.duplicate:
                self._metrics.duplicates.labels(self.namespace).inc()
            if outcome.failed:
                for target, res in outcome.failed.items():
                    self._metrics.entries.labels(self.namespace, target, res.outcome.value).inc()
                sends.append(self._router.failed(outcome, record.value, record.origin))
            elif outcome.change is not None:
                entry = outcome.entry
                event = ChangeEvent(
                    op=outcome.change,
                    key=entry.key,
                    after=None if entry.op.value == "DELETE" else entry.payload,
                    source=Source(
                        self.namespace,
                        record.origin.topic,
                        record.origin.partition,
                        record.origin.offset,
                        entry.sequence,
                        entry.entry_id,
                    ),
                    ts_ms=now_ms,
                )
                self._metrics.changes.labels(self.namespace, outcome.change.value).inc()
                sends.append(
                    self._producer.send_nowait(self._cdc, entry.key.encode(), self._codec.encode_change_event(event))
                )
                lag = time.time() - entry.lifecycle.original_write_time / 1e6
                self._metrics.end_to_end.labels(self.namespace).observe(max(lag, 0.0))

        deliveries = await asyncio.gather(*sends)
        lost = [d for d in deliveries if d.durable is not Durable.TRUE]
        if lost:
            raise NotDurable(f"{len(lost)} of {len(deliveries)} follow-up records were not stored: {lost[0].message}")
        for key, new in result.state.items():
            if new != state.get(key):
                self._table[key.encode()] = new.to_json()

    def _count(self, targets: Sequence[str], outcome: str) -> None:
        for target in targets:
            self._metrics.entries.labels(self.namespace, target, outcome).inc()


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
