"""Kafka topic administration: idempotent creation, end offsets, and how far a consumer group has come."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from connectors.endpoints import Kafka
from connectors.kafka.config import admin_config, consumer_config


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


class KafkaAdmin:
    def __init__(self, bootstrap: Kafka) -> None:
        self.bootstrap = bootstrap
        self._admin = AdminClient(admin_config(bootstrap))

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

    def set_configs(self, specs: Iterable[TopicSpec], timeout: float = 30.0) -> None:
        """Set each topic's ``config`` entries on the existing topic (others of its settings are left alone)."""
        resources = [
            ConfigResource(
                ResourceType.TOPIC,
                s.name,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in s.config.items()
                ],
            )
            for s in specs
            if s.config
        ]
        if not resources:
            return
        for future in self._admin.incremental_alter_configs(resources, request_timeout=timeout).values():
            future.result(timeout=timeout)

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
        consumer = Consumer(consumer_config(self.bootstrap, "walstream-offsets-probe"))
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


@dataclass(frozen=True, slots=True)
class GroupPosition:
    """Where a consumer group stands on one topic: the sum of its committed offsets, and the records after them."""

    committed: int
    lag: int


class GroupProbe:
    """Reads a consumer group's committed offsets against a topic's end offsets, without joining the group.
    Long-lived (one admin client and one consumer); ``close`` when done."""

    def __init__(self, bootstrap: Kafka, group: str) -> None:
        self._admin = AdminClient(admin_config(bootstrap))
        self._probe = Consumer(consumer_config(bootstrap, group))

    def ping(self, timeout: float = 5.0) -> None:
        """Raises when the cluster does not answer a metadata request."""
        self._serve_logs()
        self._admin.list_topics(timeout=timeout)

    def _serve_logs(self) -> None:
        # librdkafka hands its log lines to Python only from poll calls; these clients never poll otherwise.
        self._admin.poll(0)
        self._probe.poll(0)

    def position(self, topic: str, timeout: float = 5.0) -> GroupPosition:
        self._serve_logs()
        meta = self._admin.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        committed = self._probe.committed([TopicPartition(topic, p) for p in meta.partitions], timeout=timeout)
        lag = total = 0
        for tp in committed:
            _low, high = self._probe.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout)
            position = tp.offset if tp.offset >= 0 else 0
            lag += max(high - position, 0)
            total += position
        return GroupPosition(total, lag)

    def close(self) -> None:
        self._probe.close()
