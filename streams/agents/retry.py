"""Retry tiers: hold each tier partition until its head is due (pause/resume), then apply what is still pending."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from connectors.kafka.producer import Delivery
from streams import topics
from streams.agents.fanout import Applier, Pending, Record, settle
from streams.codec import Codec, DecodeError
from streams.dispatch import KeyState
from streams.model import Origin

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
        make_appliers: Callable[[], Mapping[str, Applier]],
        codec: Codec,
        on_fatal: Callable[[BaseException], None],
        batch_size: int = 500,
    ) -> None:
        self._config = consumer_config(bootstrap, group)
        self._topics = {topic: ns for ns, names in tier_topics.items() for topic in names}
        self._make_appliers = make_appliers
        self._codec = codec
        self._on_fatal = on_fatal
        self._batch = batch_size
        self._held: dict[TP, int] = {}
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
            appliers = self._make_appliers()
            consumer = Consumer(self._config)
            consumer.subscribe(sorted(self._topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
            self.ready.set()
            try:
                while not self._stop.is_set():
                    self._resume_due(consumer)
                    messages = consumer.consume(self._batch, timeout=self._wait_s())
                    ready = self._take_due(consumer, messages)
                    if ready:
                        loop.run_until_complete(self._process(appliers, ready))
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
        for p in partitions:
            self._held.pop((p.topic, p.partition), None)

    def _wait_s(self) -> float:
        if not self._held:
            return 1.0
        until = min(self._held.values()) - time.time() * 1000
        return min(max(until / 1000, 0.005), 1.0)

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
        last: dict[TP, int] = {}
        for msg, _ in ready:
            tp = (msg.topic() or "", msg.partition() or 0)
            last[tp] = max(last.get(tp, -1), msg.offset() or 0)
        consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()], asynchronous=False)


def tier_topics_of(namespaces: Sequence[Any]) -> dict[str, list[str]]:
    return {ns.name: [topics.retry_topic(ns.name, tier) for tier in ns.retry.tiers] for ns in namespaces}


__all__ = ["Record", "RetryRunner", "tier_topics_of"]
