"""Kafka topic administration: idempotent creation and the end offsets tests and tools compare."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


class KafkaAdmin:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin = AdminClient({"bootstrap.servers": bootstrap})

    def ensure_topics(self, specs: Iterable[TopicSpec], timeout: float = 30.0) -> list[str]:
        """Create the topics that do not exist yet; returns the names created. An existing topic with fewer
        partitions than asked is an error: keys would map to other partitions than the design expects."""
        specs = list(specs)
        existing = self._admin.list_topics(timeout=timeout).topics
        created = []
        new = [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=dict(s.config))
            for s in specs
            if s.name not in existing
        ]
        if new:
            for name, future in self._admin.create_topics(new, request_timeout=timeout).items():
                try:
                    future.result(timeout=timeout)
                    created.append(name)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
        for s in specs:
            if s.name in existing:
                have = len(existing[s.name].partitions)
                if have != s.partitions:
                    raise ValueError(f"topic {s.name} has {have} partitions, the namespace says {s.partitions}")
        return created

    def delete_topics(self, names: Iterable[str], timeout: float = 30.0) -> None:
        names = list(names)
        if not names:
            return
        for future in self._admin.delete_topics(names, request_timeout=timeout).values():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise

    def end_offsets(self, topic: str, timeout: float = 10.0) -> dict[int, int]:
        """High watermark per partition (what a read_uncommitted reader could see)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "walstream-offsets-probe"})
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
            if meta.error is not None:
                raise KafkaException(meta.error)
            marks = {}
            for p in meta.partitions:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                marks[p] = high
            return marks
        finally:
            consumer.close()
