"""Reading a topic's records written in a time range: offsets from the broker's time index, and what retention
already removed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors.endpoints import Kafka
from connectors.kafka.config import consumer_config
from connectors.kafka.consumer import Consumed, MissingTopic, read_ranges


@dataclass(frozen=True, slots=True)
class PartitionSpan:
    """The offsets [start, end) of one partition that hold the range's records, and the partition's oldest record
    still retained (``earliest``, with its timestamp in ms; -1 when the partition is empty)."""

    partition: int
    start: int
    end: int
    earliest: int
    earliest_ms: int

    @property
    def truncated(self) -> bool:
        """Retention removed records of this partition (its log no longer starts at offset 0)."""
        return self.earliest > 0


def spans(kafka: Kafka, topic: str, from_ms: int, until_ms: int | None, timeout: float = 15.0) -> list[PartitionSpan]:
    """Where the records written in [from_ms, until_ms) lie in each partition (until_ms None: up to the end)."""
    consumer = Consumer(consumer_config(kafka, "walstream-timerange-probe"))
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise MissingTopic(f"topic {topic} does not exist")
        found = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            start = _offset_at(consumer, topic, p, from_ms, high, timeout)
            end = high if until_ms is None else _offset_at(consumer, topic, p, until_ms, high, timeout)
            earliest_ms = _timestamp_at(consumer, topic, p, low, high, timeout)
            found.append(PartitionSpan(p, max(start, low), max(end, low), low, earliest_ms))
        return found
    finally:
        consumer.close()


def _offset_at(consumer: Consumer, topic: str, partition: int, at_ms: int, high: int, timeout: float) -> int:
    """The first offset written at or after ``at_ms`` (the end when there is none)."""
    (answer,) = consumer.offsets_for_times([TopicPartition(topic, partition, at_ms)], timeout=timeout)
    if answer.error is not None:
        raise KafkaException(answer.error)
    return high if answer.offset < 0 else int(answer.offset)


def _timestamp_at(consumer: Consumer, topic: str, partition: int, low: int, high: int, timeout: float) -> int:
    """The timestamp of the first record at or after ``low`` (-1 for an empty partition)."""
    if high <= low:
        return -1
    consumer.assign([TopicPartition(topic, partition, low)])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return -1
                raise KafkaException(error)
            _kind, stamp = msg.timestamp()
            return int(stamp)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no record of {topic}[{partition}] in {timeout}s"))
    finally:
        consumer.unassign()


def read_spans(kafka: Kafka, topic: str, parts: list[PartitionSpan], idle_limit_s: float = 30.0) -> Iterator[Consumed]:
    """The records of each span, partition by partition in offset order (read_committed: aborted ones are not)."""
    consumer = Consumer(consumer_config(kafka, "walstream-timerange-reader"))
    try:
        yield from read_ranges(consumer, topic, {s.partition: (s.start, s.end) for s in parts}, idle_limit_s)
    finally:
        consumer.close()
