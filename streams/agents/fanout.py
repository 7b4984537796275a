"""The fan-out step for one namespace: decode → dispatch → route → ack, a batch at a time."""

from __future__ import annotations

import asyncio
import collections
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
from streams.tracing import kafka_trace_headers

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
        return entry

    async def dead_letter_undecodable(
        self, failures: Sequence[tuple[Record, DecodeError]], sends: list[asyncio.Future[Delivery]]
    ) -> None:
        """Send undecodable records to the DLQ, holding the stream while the flood guard refuses them."""
        for record, error in failures:
            await self._admit_dead_letters(1)  # one at a time: a flood drains at the limit, never faster
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

    async def _admit_dead_letters(self, count: int) -> None:
        metrics, ns = self._metrics, self.namespace
        while True:
            try:
                self.router.guard.admit(count)
                break
            except FloodGuardTripped as exc:
                metrics.child(metrics.paused, ns).set(1)
                log.error("%s; holding for %.0fs", exc, self._hold_s, extra={"namespace": ns})
                await asyncio.sleep(self._hold_s)
        metrics.child(metrics.paused, ns).set(0)

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
        metrics, ns = self._metrics, self.namespace
        while True:
            started = time.perf_counter()
            result = await self.dispatcher.dispatch([i.entry for i in items], state)
            metrics.child(metrics.sink_latency, ns).observe(time.perf_counter() - started)
            doomed = self.router.dead_letters_needed(
                [(o, i.attempt + 1) for o, i in zip(result.outcomes, items, strict=True)]
            )
            try:
                self.router.guard.admit(doomed)
                break
            except FloodGuardTripped as exc:
                metrics.child(metrics.paused, ns).set(1)
                log.error("%s; trying the same entries again in %.0fs", exc, self._hold_s)
                await asyncio.sleep(self._hold_s)
        metrics.child(metrics.paused, ns).set(0)

        # Counted per batch, then added to the counters once per label set.
        applied: collections.Counter[tuple[str, ...]] = collections.Counter()
        skipped: collections.Counter[tuple[str, ...]] = collections.Counter()
        counts: collections.Counter[tuple[str, str]] = collections.Counter()  # (target, outcome)
        changes: collections.Counter[str] = collections.Counter()
        duplicates = 0
        end_to_end = metrics.child(metrics.end_to_end, ns)
        now = time.time()
        now_ms = int(now * 1000)
        for outcome, item in zip(result.outcomes, items, strict=True):
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
                sends.append(self._publish(entry, outcome.change, item.origin, now_ms))
                changes[outcome.change.value] += 1
                end_to_end.observe(max(now - entry.lifecycle.original_write_time / 1e6, 0.0))
                due = due_ms(entry)
                if due:
                    metrics.child(metrics.delay_lateness, ns).observe(max(now - due / 1000, 0.0))
            elif not outcome.applied:
                duplicates += 1  # every target already held this version or a newer one
        for outcomes, label in ((applied, "applied"), (skipped, "skipped")):
            for targets, count in outcomes.items():
                for target in targets:
                    counts[(target, label)] += count
        for (target, label), count in counts.items():
            metrics.child(metrics.entries, ns, target, label).inc(count)
        for op, count in changes.items():
            metrics.child(metrics.changes, ns, op).inc(count)
        if duplicates:
            metrics.child(metrics.duplicates, ns).inc(duplicates)
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
        return self._producer.send_nowait(
            self._cdc,
            entry.key.encode(),
            self._codec.encode_change_event(event),
            headers=kafka_trace_headers(entry.headers) or None,
        )


async def settle(sends: Sequence[asyncio.Future[Delivery]]) -> None:
    """Wait for follow-up records; raise NotDurable unless every one is stored."""
    deliveries = await asyncio.gather(*sends)
    lost = [d for d in deliveries if d.durable is not Durable.TRUE]
    if lost:
        raise NotDurable(f"{len(lost)} of {len(deliveries)} follow-up records were not stored: {lost[0].message}")


class FanoutProcessor:
    """The fan-out agent's step for one namespace: decode → delay or dispatch → route → (caller acks).

    Batches may be processed concurrently (the Batcher pipelines them) and stay in order all the same: the apply
    step (sink writes, change events, retry and DLQ records) runs one batch at a time, in the order the batches
    arrived, and sees the idempotency state every earlier batch left, even before it is in the table. Each batch
    then waits until its own follow-up records are durable and the batch before it has finished, and only then
    writes its state to the table. Once a batch failed, every later batch fails too, so nothing after it can be
    acknowledged."""

    def __init__(self, applier: Applier, table: MutableMapping[bytes, Any]) -> None:
        self.namespace = applier.namespace
        self._applier = applier
        self._table = table
        self._applying = asyncio.Lock()
        # New state of keys whose batch has not written it to the table yet (at most a few batches' keys).
        self._unsaved: dict[str, KeyState] = {}
        self._previous: asyncio.Future[None] | None = None  # done when the batch before this one has finished
        self._failure: BaseException | None = None

    async def process(self, records: Sequence[Record]) -> None:
        sends: list[asyncio.Future[Delivery]] = []
        async with self._applying:
            self._check()
            items: list[Pending] = []
            undecodable: list[tuple[Record, DecodeError]] = []
            for record in records:
                entry = self._applier.decode(record)
                if isinstance(entry, DecodeError):
                    undecodable.append((record, entry))
                    continue
                item = Pending(entry, record.value, record.origin)
                if not self._applier.delay_if_not_due(item, sends):
                    items.append(item)
            state: dict[str, KeyState] = {}
            for item in items:
                key = item.entry.key
                if key not in state:
                    unsaved = self._unsaved.get(key)
                    state[key] = unsaved if unsaved is not None else KeyState.from_json(self._table.get(key.encode()))
            try:
                await self._applier.dead_letter_undecodable(undecodable, sends)
                new_state = await self._applier.apply(items, state, sends) if items else {}
            except BaseException as exc:
                self._fail(exc)
                raise
            changed = {key: new for key, new in new_state.items() if new != state.get(key)}
            self._unsaved.update(changed)
            previous = self._previous
            finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            finished.add_done_callback(_retrieve)
            self._previous = finished
        try:
            await settle(sends)
            if previous is not None:
                await asyncio.shield(previous)  # raises when an earlier batch failed
            for key, new in changed.items():
                self._table[key.encode()] = new.to_json()
        except BaseException as exc:
            self._fail(exc)
            _finish(finished, exc)
            raise
        _finish(finished, None)
        for key, new in changed.items():
            if self._unsaved.get(key) is new:  # a later batch may have moved the key on already
                del self._unsaved[key]

    def _check(self) -> None:
        if self._failure is not None:
            raise NotDurable(f"an earlier batch of {self.namespace} failed: {self._failure!r}") from self._failure

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._unsaved.clear()


def _finish(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen: it is reported where it happened, not again as 'never retrieved'."""
    if not future.cancelled():
        future.exception()


class Batcher:
    """Collects records into batches of at most ``max_size``, started when full or ``within`` seconds after the
    first record arrived.

    Up to ``depth`` batches are in flight: while one waits for its follow-up records to become durable, the next
    is already being applied. A batch is acknowledged only after its ``process`` returned, and strictly in order:
    only after every earlier batch was acknowledged. Memory stays bounded: with ``depth`` batches in flight and
    the buffer full, the adder waits (backpressure pauses consumption). When a batch fails, neither it nor any
    later batch is acknowledged: ``on_fatal`` is called once (not for a cancellation at shutdown), and ``add``
    and ``flush`` raise from then on, so the caller stops and the records are read again."""

    def __init__(
        self,
        process: Callable[[list[Any]], Awaitable[None]],
        ack: Callable[[list[Any]], Awaitable[None]],
        max_size: int,
        within: float,
        on_fatal: Callable[[BaseException], None],
        depth: int = 2,
    ) -> None:
        self._process = process
        self._ack = ack
        self._max = max_size
        self._within = within
        self._on_fatal = on_fatal
        self._depth = max(1, depth)
        self._buffer: list[Any] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: collections.deque[asyncio.Task[None]] = collections.deque()  # in batch order
        self._failure: BaseException | None = None

    async def add(self, item: Any) -> None:
        self._check()
        self._buffer.append(item)
        if len(self._buffer) >= self._max:
            await self._submit()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._within, self._submit_later)

    def _submit_later(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._submit())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)  # a failure is reported by the batch that failed

    async def flush(self) -> None:
        """Start what is buffered, then wait until every batch is processed and acknowledged."""
        await self._submit()
        while self._inflight:
            await asyncio.wait([self._inflight[-1]])
        self._check()

    async def _submit(self) -> None:
        async with self._lock:
            if not self._buffer:
                return
            while len(self._inflight) >= self._depth:
                await asyncio.wait([self._inflight[0]])
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._check()
            batch, self._buffer = self._buffer, []
            previous = self._inflight[-1] if self._inflight else None
            task = asyncio.get_running_loop().create_task(self._run(batch, previous))
            self._inflight.append(task)
            task.add_done_callback(self._done)

    async def _run(self, batch: list[Any], previous: asyncio.Task[None] | None) -> None:
        try:
            await self._process(batch)
        except BaseException as exc:
            # Nothing of this batch is acknowledged; the process stops so the records are read again.
            self._fail(exc)
            raise
        try:
            if previous is not None:
                await asyncio.shield(previous)  # acknowledged in order; raises (no ack) when an earlier batch failed
            await self._ack(batch)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.remove(task)
        _retrieve(task)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            if not isinstance(exc, asyncio.CancelledError):  # shutdown: the records are simply read again
                self._on_fatal(exc)

    def _check(self) -> None:
        if self._failure is not None:
            raise NotDurable(f"an earlier batch failed: {self._failure!r}") from self._failure
