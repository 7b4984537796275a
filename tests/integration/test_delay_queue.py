"""The delayed-queue persona: an entry is delivered to its Kafka topic target when due, never before."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from streams.client.sdk import SyncWalWriter
from streams.model import Op
from tests.integration.pipeline import WorkerProcess, create_namespace, delivery_lateness

pytestmark = pytest.mark.integration


def test_delayed_entries_are_delivered_when_due_and_never_early(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    outbox = f"outbox.{time.time_ns()}"
    ns = create_namespace(
        endpoints,
        tmp_path / "ns",
        persona="delay-queue",
        targets={"outbox": {"type": "kafka", "topic": outbox}},
        retry={"tiers": ["1s", "5s", "30s"]},
    )
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    consumer = Consumer(
        {
            "bootstrap.servers": endpoints.kafka_bootstrap,
            "group.id": f"outbox-{time.time_ns()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([outbox])
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    rnd = random.Random(3)
    try:
        entries = [
            writer.prepare(
                ns.name,
                f"job-{i}",
                Op.UPSERT,
                {"n": i},
                delay_ms=rnd.randrange(0, 12_000),
                jitter_ms=rnd.choice([0, 500]),
            )
            for i in range(120)
        ]
        futures = [writer.submit_entry(e) for e in entries]
        assert all(f.result(60).ok for f in futures)
        _, _, lateness = delivery_lateness(consumer, entries, 90, worker.tail)
        assert lateness[0] >= 0, f"delivered {-lateness[0]} ms early"
        assert lateness[len(lateness) // 2] < 1000, lateness
    finally:
        writer.close()
        consumer.close()
        worker.stop()
        ns.drop(*stores)
