"""Retry tiers: hold each tier partition until its head is due (pause/resume), then apply what is still pending."""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from connectors.kafka.producer import Delivery
from streams import topics
from streams.agents.fanout import Applier, Pending, settle
from streams.codec import Codec, DecodeError
from streams.dispatch import KeyState
from streams.model import Origin
from streams.retry import due_ms

log = logging.getLogger(__name__)

TP = tuple[str, int]


def consumer_config(bootstrap: str, group: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "max.poll.interval.ms": 300000,
        "session.timeout.ms": 30000,
        # A resumed partition is fetched at once: the broker answers without waiting for more data.
        "fetch.wait.max.ms": 10,
    }


class RetryRunner:
    """One consumer over the tier topics of its namespaces, in its own thread and event loop.

    A partition whose head is not due is paused and its position rewound to the head; it is resumed when the
    head is due. Pauses are local to this consumer: after a rebalance the new owner starts unpaused, reads the
    head and pauses on its own, so no partition stays paused forever. Offsets are committed only after the
    outcome of each record is durable, and only as a contiguous prefix per partition.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        tier_topics: Mapping[str, Sequence[str]],
        make_appliers: Callable[[], tuple[Mapping[str, Applier], Callable[[], Awaitable[None]]]],
        codec: Codec,
        on_fatal: Callable[[BaseException], None],
        batch_size: int = 500,
        tier_ms: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self._config = consumer_config(bootstrap, group)
        self._topics = {topic: ns for ns, names in tier_topics.items() for topic in names}
        self._make_appliers = make_appliers
        self._codec = codec
        self._on_fatal = on_fatal
        self._batch = batch_size
        self._held: dict[TP, int] = {}
        # Delayed entries due within the smallest tier wait here, not in a topic, so they keep the tiers FIFO.
        self._waiting: list[tuple[int, int, Message, Any]] = []
        self._inflight: dict[TP, set[int]] = {}  # offsets handed out but not finished (commits stop below them)
        self._finished: dict[TP, int] = {}  # the highest finished offset per partition
        self._committed: dict[TP, int] = {}
        self._smallest_tier_ms = {ns: min(ms) for ns, ms in (tier_ms or {}).items()}
        self._order = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="walstream-retry", daemon=True)
        self.ready = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or not self._thread.ident

    @property
    def held(self) -> dict[TP, int]:
        """Paused partitions and the time (ms) each is due to resume."""
        return dict(self._held)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            appliers, close = self._make_appliers()
            consumer = Consumer(self._config)
            consumer.subscribe(sorted(self._topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
            self.ready.set()
            try:
                while not self._stop.is_set():
                    self._resume_due(consumer)
                    messages = self._poll(consumer)
                    ready = self._release_waiting() + self._take_due(consumer, messages)
                    if ready:
                        loop.run_until_complete(self._process(appliers, ready))
                        self._commit(consumer, ready)
            finally:
                consumer.close()
                loop.run_until_complete(close())
        except BaseException as exc:  # noqa: BLE001 - nothing may fail silently in a background thread
            if not self._stop.is_set():
                self._on_fatal(exc)
        finally:
            loop.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("retry tiers assigned: %s", [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        for tp in revoked:
            self._held.pop(tp, None)
            self._inflight.pop(tp, None)
            self._finished.pop(tp, None)
            self._committed.pop(tp, None)
        # Uncommitted, so the new owner reads them again.
        self._waiting = [w for w in self._waiting if (w[2].topic(), w[2].partition()) not in revoked]
        heapq.heapify(self._waiting)

    def _wait_s(self) -> float:
        wakeups = list(self._held.values()) + ([self._waiting[0][0]] if self._waiting else [])
        if not wakeups:
            return 1.0
        until = min(wakeups) - time.time() * 1000
        return min(max(until / 1000, 0.001), 1.0)

    def _poll(self, consumer: Consumer) -> list[Message]:
        """Wait for the first record at most until the next wake-up, then take what is already fetched."""
        first = consumer.poll(self._wait_s())
        if first is None:
            return []
        return [first, *consumer.consume(self._batch - 1, timeout=0)]

    def _release_waiting(self) -> list[tuple[Message, Any]]:
        now = time.time() * 1000
        released = []
        while self._waiting and self._waiting[0][0] <= now:
            _, _, msg, envelope = heapq.heappop(self._waiting)
            released.append((msg, envelope))
        return released

    def _resume_due(self, consumer: Consumer) -> None:
        now = time.time() * 1000
        due = [tp for tp, at in self._held.items() if at <= now]
        if due:
            consumer.resume([TopicPartition(t, p) for t, p in due])
            for tp in due:
                del self._held[tp]

    def _take_due(self, consumer: Consumer, messages: list[Message]) -> list[tuple[Message, Any]]:
        """The messages that are due, a contiguous prefix per partition; the rest wait, their partition paused."""
        ready: list[tuple[Message, Any]] = []
        now = time.time() * 1000
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("retry consumer: %s", error)
                continue
            tp = (msg.topic() or "", msg.partition() or 0)
            if tp in self._held:
                continue
            try:
                envelope = self._codec.decode_retry_envelope(msg.value() or b"")
            except DecodeError as exc:
                ready.append((msg, exc))
                continue
            if envelope.due_ms > now:
                partition = TopicPartition(tp[0], tp[1], msg.offset() or 0)
                consumer.pause([partition])
                consumer.seek(partition)
                self._held[tp] = envelope.due_ms
                continue
            self._inflight.setdefault(tp, set()).add(msg.offset() or 0)
            exact = due_ms(envelope.entry) if envelope.attempt == 0 else 0
            smallest = self._smallest_tier_ms.get(self._topics[tp[0]], 0)
            if now < exact < now + smallest:
                heapq.heappush(self._waiting, (exact, next(self._order), msg, envelope))
                continue
            ready.append((msg, envelope))
        return ready

    async def _process(self, appliers: Mapping[str, Applier], ready: list[tuple[Message, Any]]) -> None:
        sends: list[asyncio.Future[Delivery]] = []
        by_ns: dict[str, list[Pending]] = {}
        for msg, envelope in ready:
            namespace = self._topics[msg.topic() or ""]
            applier = appliers[namespace]
            origin = Origin(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
            if isinstance(envelope, DecodeError):
                sends.append(applier.router.undecodable(msg.value() or b"", msg.key(), origin, envelope))
                continue
            entry = dataclasses.replace(envelope.entry, targets=envelope.pending_targets)
            item = Pending(
                entry,
                self._codec.encode_entry(envelope.entry),
                envelope.origin,
                envelope.attempt,
                envelope.first_error or None,
            )
            if envelope.attempt == 0 and applier.delay_if_not_due(item, sends):
                continue
            by_ns.setdefault(namespace, []).append(item)
        for namespace, items in by_ns.items():
            # No idempotency table here: retried targets are written again (they are versioned), and an upsert
            # is announced as an update.
            state = {i.entry.key: KeyState(exists=True) for i in items}
            await appliers[namespace].apply(items, state, sends)
        await settle(sends)

    def _commit(self, consumer: Consumer, ready: list[tuple[Message, Any]]) -> None:
        """Commit per partition up to the first offset not finished yet (a waiting entry holds it back)."""
        for msg, _ in ready:
            tp = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            self._inflight.get(tp, set()).discard(offset)
            self._finished[tp] = max(self._finished.get(tp, -1), offset)
        offsets = []
        for tp in {(m.topic() or "", m.partition() or 0) for m, _ in ready}:
            pending = self._inflight.get(tp)
            position = min(pending) if pending else self._finished[tp] + 1
            if position > self._committed.get(tp, -1):
                offsets.append(TopicPartition(tp[0], tp[1], position))
                self._committed[tp] = position
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=False)


def tier_topics_of(namespaces: Sequence[Any]) -> dict[str, list[str]]:
    return {ns.name: [topics.retry_topic(ns.name, tier) for tier in ns.retry.tiers] for ns in namespaces}
