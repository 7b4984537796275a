"""Retry tiers: hold each tier partition until its head is due (pause/resume), then hand the entry back to its log."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from connectors.endpoints import Kafka
from connectors.kafka.config import consumer_config
from streams import topics
from streams.codec import Codec, DecodeError
from streams.core.routing import Router
from streams.core.schedule import due_ms
from streams.core.tiers import TP, TierBook
from streams.metrics import Metrics
from streams.model import Origin
from streams.pipeline.apply import Sends, settle

log = logging.getLogger(__name__)

#: A resumed partition is fetched at once: the broker answers without waiting for more data.
_TIER_CONSUMER = {"max.poll.interval.ms": 300000, "session.timeout.ms": 10000, "fetch.wait.max.ms": 10}


class RetryRunner:
    """One consumer over the tier topics of its namespaces, in its own thread and event loop.

    It only holds entries until they are due; it never writes a target. A due entry goes back to its
    namespace's log (a delayed entry that is not due yet moves on to its next tier), where the fan-out agent
    that owns the key applies what is still pending and decides whether it changes the key: one writer per key,
    so the change topic stays a faithful history.

    A partition whose head is not due is paused and its position rewound to the head; it is resumed when the
    head is due. Pauses are local to this consumer: after a rebalance the new owner starts unpaused, reads the
    head and pauses on its own, so no partition stays paused forever. Offsets are committed only after each
    record's hand-back is durable, and only as a contiguous prefix per partition.
    """

    def __init__(
        self,
        bootstrap: Kafka,
        group: str,
        tier_topics: Mapping[str, Sequence[str]],
        routers: Mapping[str, Router],
        codec: Codec,
        on_fatal: Callable[[BaseException], None],
        batch_size: int = 500,
        tier_ms: Mapping[str, Sequence[int]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = consumer_config(bootstrap, group, overrides=_TIER_CONSUMER)
        self._topics = {topic: ns for ns, names in tier_topics.items() for topic in names}
        self._routers = dict(routers)
        self._codec = codec
        self._on_fatal = on_fatal
        self._batch = batch_size
        # Delayed entries due within the smallest tier wait in the book, not in a topic, so the tiers stay FIFO.
        self._book: TierBook[tuple[Message, Any]] = TierBook()
        self._smallest_tier_ms = {ns: min(ms) for ns, ms in (tier_ms or {}).items()}
        self._metrics = metrics
        self._reported: dict[str, int] = {}  # held partitions per tier topic, as last reported
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
        return self._book.held

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            consumer = Consumer(self._config)
            consumer.subscribe(sorted(self._topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
            self.ready.set()
            try:
                while not self._stop.is_set():
                    self._resume_due(consumer)
                    messages = self._poll(consumer)
                    ready = self._book.release_due(time.time() * 1000) + self._take_due(consumer, messages)
                    self._report_held()
                    if ready:
                        loop.run_until_complete(self._process(ready))
                        self._commit(consumer, ready)
            finally:
                consumer.close()
        except BaseException as exc:  # noqa: BLE001 - nothing may fail silently in a background thread
            if not self._stop.is_set():
                self._on_fatal(exc)
        finally:
            loop.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("retry tiers assigned: %s", [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Uncommitted, so the new owner reads them again.
        self._book.revoke((p.topic, p.partition) for p in partitions)

    def _poll(self, consumer: Consumer) -> list[Message]:
        """Wait for the first record at most until the next wake-up, then take what is already fetched."""
        first = consumer.poll(self._book.wait_s(time.time() * 1000))
        if first is None:
            return []
        return [first, *consumer.consume(self._batch - 1, timeout=0)]

    def _resume_due(self, consumer: Consumer) -> None:
        due = self._book.resume_due(time.time() * 1000)
        if due:
            consumer.resume([TopicPartition(t, p) for t, p in due])

    def _report_held(self) -> None:
        if self._metrics is None:
            return
        held = dict.fromkeys(self._topics, 0)
        for topic, _ in self._book.held:
            held[topic] += 1
        for topic, count in held.items():
            if self._reported.get(topic) != count:
                self._reported[topic] = count
                namespace = self._topics[topic]
                tier = topic.rpartition(".retry.")[2]
                self._metrics.retry_held.labels(namespace, tier).set(count)

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
            if self._book.is_held(tp):
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
                self._book.hold(tp, envelope.due_ms)
                continue
            self._book.start(tp, msg.offset() or 0)
            exact = due_ms(envelope.entry) if envelope.attempt == 0 else 0
            smallest = self._smallest_tier_ms.get(self._topics[tp[0]], 0)
            if now < exact < now + smallest:
                self._book.wait(tp, exact, (msg, envelope))
                continue
            ready.append((msg, envelope))
        return ready

    async def _process(self, ready: list[tuple[Message, Any]]) -> None:
        sends: Sends = []
        now_ms = int(time.time() * 1000)
        for msg, envelope in ready:
            router = self._routers[self._topics[msg.topic() or ""]]
            if isinstance(envelope, DecodeError):
                origin = Origin(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
                sends.append(router.undecodable(msg.value() or b"", msg.key(), origin, envelope))
            else:
                sends.append(router.when_due(envelope, now_ms))
        await settle(sends)

    def _commit(self, consumer: Consumer, ready: list[tuple[Message, Any]]) -> None:
        """Commit per partition up to the first offset not finished yet (a waiting entry holds it back)."""
        for msg, _ in ready:
            self._book.finish((msg.topic() or "", msg.partition() or 0), msg.offset() or 0)
        positions = self._book.commits((m.topic() or "", m.partition() or 0) for m, _ in ready)
        if positions:
            offsets = [TopicPartition(t, p, position) for (t, p), position in positions.items()]
            consumer.commit(offsets=offsets, asynchronous=False)


def tier_topics_of(namespaces: Sequence[Any]) -> dict[str, list[str]]:
    return {ns.name: [topics.retry_topic(ns.name, tier) for tier in ns.retry.tiers] for ns in namespaces}
