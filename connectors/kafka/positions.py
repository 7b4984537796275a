"""Where topics and the consumer groups reading them stand, read without joining any group: partitions, watermarks,
committed offsets, offsets by time, and the first record at an offset (what `walstream status` shows)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.endpoints import Kafka
from connectors.kafka.config import admin_config, consumer_config
from connectors.kafka.consumer import Consumed, read_ranges

#: A group's committed offsets: (topic, partition) -> the next offset it will read.
Committed = dict[tuple[str, int], int]


@dataclass(frozen=True, slots=True)
class Head:
    """The first visible record at or after an offset: where it is, when it was written (ms), its value."""

    partition: int
    offset: int
    timestamp_ms: int
    value: bytes


class PositionProbe:
    """One admin client and one reader (a group of its own that never commits), kept for many looks; ``close``
    when done. Calls raise KafkaException when the cluster does not answer within ``timeout`` seconds."""

    def __init__(self, kafka: Kafka, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._admin = AdminClient(admin_config(kafka))
        reader = f"walstream-status-{uuid.uuid4().hex[:8]}"
        self._consumer = Consumer(consumer_config(kafka, reader, overrides={"enable.partition.eof": True}))

    def topics(self) -> dict[str, list[int]]:
        """Every topic of the cluster with its partition numbers (listing all of them never creates one)."""
        self._admin.poll(0)  # serves librdkafka's log lines
        meta = self._admin.list_topics(timeout=self.timeout)
        return {name: sorted(t.partitions) for name, t in meta.topics.items() if t.error is None}

    def watermarks(self, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
        """(low, high) per partition: the oldest offset retention kept, and the next offset to be written."""
        marks = {}
        for p in partitions:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout)
            marks[p] = (int(low), int(high))
        return marks

    def committed(self, prefix: str) -> dict[str, Committed]:
        """The committed offsets of every consumer group whose name starts with ``prefix``, asked all at once."""
        listed = self._admin.list_consumer_groups(request_timeout=self.timeout).result(timeout=self.timeout)
        names = sorted(g.group_id for g in listed.valid if g.group_id.startswith(prefix))
        futures: dict[str, Future[ConsumerGroupTopicPartitions]] = {}
        for name in names:  # the client asks one group per request
            request = [ConsumerGroupTopicPartitions(name)]
            futures.update(self._admin.list_consumer_group_offsets(request, request_timeout=self.timeout))
        found: dict[str, Committed] = {}
        for name, future in futures.items():
            try:
                answer = future.result(timeout=self.timeout)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND:  # deleted since it was listed
                    continue
                raise
            offsets = {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions or () if tp.offset >= 0}
            if offsets:
                found[name] = offsets
        return found

    def offsets_at(self, topic: str, partitions: list[int], at_ms: int) -> dict[int, int]:
        """Per partition, the first offset written at or after ``at_ms``; -1 when nothing was written since."""
        asked = [TopicPartition(topic, p, at_ms) for p in partitions]
        answers = self._consumer.offsets_for_times(asked, timeout=self.timeout) if asked else []
        for answer in answers:
            if answer.error is not None:
                raise KafkaException(answer.error)
        return {a.partition: int(a.offset) for a in answers}

    def heads(self, topic: str, offsets: Mapping[int, int]) -> dict[int, Head]:
        """The first visible record at or after each partition's offset (read_committed: transaction markers and
        aborted records are passed over); a partition with none before its end is left out."""
        if not offsets:
            return {}
        assigned = [TopicPartition(topic, p, o) for p, o in offsets.items()]
        self._consumer.assign(assigned)
        found: dict[int, Head] = {}
        open_ = set(offsets)
        deadline = time.monotonic() + self.timeout
        try:
            while open_ and time.monotonic() < deadline:
                msg = self._consumer.poll(0.2)
                if msg is None:
                    continue
                error = msg.error()
                partition = msg.partition() or 0
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    open_.discard(partition)
                elif partition in open_:
                    stamp = msg.timestamp()[1]
                    found[partition] = Head(partition, msg.offset() or 0, int(stamp), msg.value() or b"")
                    open_.discard(partition)
                    self._consumer.pause([TopicPartition(topic, partition)])  # its head is all we want
        finally:
            # A pause outlives the assignment in the client: the next look at this topic must not find it paused.
            self._consumer.resume(assigned)
            self._consumer.unassign()
        return found

    def read(self, topic: str, ranges: Mapping[int, tuple[int, int]]) -> Iterator[Consumed]:
        """The records at offsets [start, end) of each partition, partition by partition in offset order."""
        try:
            yield from read_ranges(self._consumer, topic, dict(ranges), idle_limit_s=self.timeout)
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        self._consumer.close()
