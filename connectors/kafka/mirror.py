"""How far a MirrorMaker 2 replica of a log is behind its source, and whether MirrorMaker 2 is alive.

MirrorMaker 2 keeps each record's partition and timestamp. The newest record of a replica partition therefore
says up to when the source partition is copied: the source records after that timestamp are the lag, in
records (offsets, transaction markers included) and in seconds (the age of the oldest record not copied yet).
MirrorMaker 2's heartbeats (one a second into ``heartbeats`` in the target, copied on to the other region as
``<region>.heartbeats``) say whether it runs.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from connectors.endpoints import Kafka
from connectors.kafka.config import consumer_config


@dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    records: int  # source offsets after the newest copied record (0: up to date)
    seconds: float  # age of the oldest source record not copied yet (0.0: up to date)


def _consumer(kafka: Kafka) -> Consumer:
    return Consumer(consumer_config(kafka, f"walstream-mirror-{uuid.uuid4().hex[:8]}"))


def _record_at(consumer: Consumer, topic: str, partition: int, offset: int, timeout_s: float) -> float | None:
    """The timestamp (seconds) of the first committed record at or after ``offset``, or None."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error() is not None:
            continue
        return float(msg.timestamp()[1]) / 1000
    return None


def newest_timestamp(kafka: Kafka, topic: str, timeout_s: float = 10.0) -> dict[int, float | None]:
    """Per partition of ``topic``, the timestamp of its last record (None: empty, or the topic is missing)."""
    consumer = _consumer(kafka)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        found: dict[int, float | None] = {}
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            found[partition] = _record_at(consumer, topic, partition, high - 1, timeout_s) if high > low else None
        return found
    finally:
        consumer.close()


def replica_lag(source: Kafka, topic: str, target: Kafka, replica: str, timeout_s: float = 10.0) -> list[PartitionLag]:
    """Per partition, how far ``replica`` (in ``target``) is behind ``topic`` (in ``source``)."""
    copied = newest_timestamp(target, replica, timeout_s)
    consumer = _consumer(source)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        now = time.time()
        lags = []
        for partition in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            upto = copied.get(partition)
            if upto is None:
                first = low
            else:
                (found,) = consumer.offsets_for_times(
                    [TopicPartition(topic, partition, int(upto * 1000) + 1)], timeout=timeout_s
                )
                first = high if found.offset < 0 else found.offset
            if first >= high:
                lags.append(PartitionLag(partition, 0, 0.0))
                continue
            oldest = _record_at(consumer, topic, partition, first, timeout_s)
            seconds = max(now - oldest, 0.0) if oldest is not None else 0.0
            lags.append(PartitionLag(partition, high - first, seconds))
        return lags
    finally:
        consumer.close()


def heartbeat_age(target: Kafka, source_region: str, timeout_s: float = 10.0) -> float | None:
    """Seconds since the newest heartbeat from ``source_region`` reached ``target`` (None: none ever did)."""
    stamps = [t for t in newest_timestamp(target, f"{source_region}.heartbeats", timeout_s).values() if t]
    return max(time.time() - max(stamps), 0.0) if stamps else None
