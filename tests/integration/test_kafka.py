"""Real Kafka: a produced batch comes back whole and in order."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.endpoints import Endpoints

pytestmark = pytest.mark.integration


def test_produce_batch_and_consume_it_back(endpoints: Endpoints, unique_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})
    topic = f"it.{unique_name}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    try:
        producer = Producer({"bootstrap.servers": endpoints.kafka_bootstrap, "acks": "all", "enable.idempotence": True})
        sent = [(f"k{i % 7}".encode(), f"value-{i}".encode()) for i in range(500)]
        for key, value in sent:
            producer.produce(topic, key=key, value=value)
        assert producer.flush(30) == 0

        consumer = Consumer(
            {
                "bootstrap.servers": endpoints.kafka_bootstrap,
                "group.id": f"g-{unique_name}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        received: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 60
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received.append((msg.key(), msg.value()))
        consumer.close()
        assert received == sent
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)
