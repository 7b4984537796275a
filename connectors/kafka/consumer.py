"""Reading a topic outside a consumer group's work: everything up to its current end, or following it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from connectors.endpoints import Kafka
from connectors.kafka.config import consumer_config


@dataclass(frozen=True, slots=True)
class Consumed:
    """One record as read from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class MissingTopic(LookupError):
    """The topic to read does not exist."""


def _consumed(msg: Message) -> Consumed:
    raw = msg.headers() or ()
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = tuple((name, _bytes(value)) for name, value in pairs)
    return Consumed(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value() or b"", headers)


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


def _reader(bootstrap: Kafka, purpose: str, from_beginning: bool = True) -> Consumer:
    """A consumer in a group of its own that never commits: reading leaves no trace in the cluster."""
    group = f"walstream-{purpose}-{uuid.uuid4().hex[:8]}"
    return Consumer(consumer_config(bootstrap, group, from_beginning=from_beginning))


def read_to_end(bootstrap: Kafka, topic: str, idle_limit_s: float = 30.0) -> Iterator[Consumed]:
    """Every record of ``topic`` from its start up to its end as of the call, partition by partition in offset
    order. Raises MissingTopic when the topic does not exist."""
    consumer = _reader(bootstrap, "reader")
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            raise MissingTopic(f"topic {topic}: {meta.error}")
        ranges = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in meta.partitions}
        yield from read_ranges(consumer, topic, ranges, idle_limit_s)
    finally:
        consumer.close()


def read_ranges(
    consumer: Consumer, topic: str, ranges: dict[int, tuple[int, int]], idle_limit_s: float = 30.0
) -> Iterator[Consumed]:
    """The records at offsets [start, end) of each partition, partition by partition in offset order, read with
    ``consumer`` (assigned here; the caller closes it). Stops once every range is read, or after ``idle_limit_s``
    without a record."""
    wanted = {p: span for p, span in ranges.items() if span[1] > span[0]}
    if not wanted:
        return
    consumer.assign([TopicPartition(topic, p, start) for p, (start, _end) in wanted.items()])
    remaining = {p: end for p, (_start, end) in wanted.items()}
    idle_since = time.monotonic()
    # Transaction markers take offsets too, so a partition may end without a record at its last offset.
    while remaining and time.monotonic() - idle_since < idle_limit_s:
        msg = consumer.poll(1.0)
        if msg is None:
            _drop_finished(consumer, topic, remaining)
            continue
        idle_since = time.monotonic()
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(error)
            continue
        partition, offset = msg.partition() or 0, msg.offset() or 0
        if partition not in remaining or offset >= remaining[partition]:
            remaining.pop(partition, None)
            continue
        yield _consumed(msg)
        if offset + 1 >= remaining[partition]:
            remaining.pop(partition, None)


def _drop_finished(consumer: Consumer, topic: str, remaining: dict[int, int]) -> None:
    """Forget partitions whose position already reached the end (the rest of them were control records)."""
    for tp in consumer.position([TopicPartition(topic, p) for p in remaining]):
        if tp.offset >= 0 and tp.offset >= remaining.get(tp.partition, 0):
            remaining.pop(tp.partition, None)


def follow(
    bootstrap: Kafka, topic: str, *, from_beginning: bool, idle_timeout_s: float = 0.0, max_records: int = 0
) -> Iterator[Consumed]:
    """Records of ``topic`` as they arrive (from the oldest, or from now on); stops after ``max_records`` or
    ``idle_timeout_s`` seconds without a record (0: never)."""
    consumer = _reader(bootstrap, "follow", from_beginning=from_beginning)
    consumer.subscribe([topic])
    seen = 0
    idle_since = time.monotonic()
    try:
        while not max_records or seen < max_records:
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout_s and time.monotonic() - idle_since > idle_timeout_s:
                    return
                continue
            idle_since = time.monotonic()
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            yield _consumed(msg)
            seen += 1
    finally:
        consumer.close()
