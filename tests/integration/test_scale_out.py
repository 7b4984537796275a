"""Scale-out on Kafka's consumer groups: two workers share a namespace's partitions, and one may die."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cassandra.cluster import Session
from confluent_kafka.admin import AdminClient
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from streams.client.sdk import SyncWalWriter
from streams.model import Op, WalEntry
from streams.tools.cdc import read_cdc
from tests.integration.pipeline import (
    WorkerProcess,
    cassandra_rows,
    create_namespace,
    es_docs,
    expected_rows,
    model_of,
    wait_until,
)

pytestmark = pytest.mark.integration


def _members_with_partitions(endpoints: Endpoints, group: str) -> int:
    admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})
    (description,) = [f.result(10) for f in admin.describe_consumer_groups([group]).values()]
    return sum(1 for m in description.members if m.assignment.topic_partitions)


def _write(writer: SyncWalWriter, entries: list[WalEntry]) -> None:
    for start in range(0, len(entries), 500):
        futures = [writer.submit_entry(e) for e in entries[start : start + 500]]
        assert all(f.result(60).ok for f in futures)
        time.sleep(0.1)  # a steady stream, so the kill lands mid-stream


def test_two_workers_share_the_partitions_and_one_killed_loses_nothing(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=6)
    a = WorkerProcess(ns, tmp_path / "data-a", tmp_path / "a.log").start()
    b = WorkerProcess(ns, tmp_path / "data-b", tmp_path / "b.log").start()
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        keys = [f"k{i}" for i in range(2000)]
        first = [writer.prepare(ns.name, k, Op.UPSERT, {"color": "red", "qty": i}) for i, k in enumerate(keys)]
        second = [writer.prepare(ns.name, k, Op.UPSERT, {"color": "blue", "qty": i}) for i, k in enumerate(keys)]
        third = [writer.prepare(ns.name, k, Op.DELETE) for k in keys[::5]]
        _write(writer, first)
        # Both workers own partitions and apply entries before one of them is killed.
        group = f"walstream.{ns.name}"
        wait_until(lambda: _members_with_partitions(endpoints, group) == 2, 120, "both workers to own partitions")
        wait_until(lambda: len(cassandra_rows(session, ns.keyspace)) > 500, 120, "entries to be applied", a.tail)
        _write(writer, second[:1000])
        b.kill()
        _write(writer, second[1000:] + third)
        entries = first + second + third
        want = expected_rows(model_of(entries))

        def differences() -> str:
            rows = cassandra_rows(session, ns.keyspace)
            wrong = [k for k in want if rows.get(k) != want[k]] + [k for k in rows if k not in want]
            return f"{len(wrong)} keys differ, e.g. {[(k, rows.get(k), want.get(k)) for k in wrong[:5]]}\n{a.tail()}"

        wait_until(lambda: cassandra_rows(session, ns.keyspace) == want, 240, "cassandra to converge", differences)
        wait_until(lambda: es_docs(es, ns.index) == want, 120, "search to converge", a.tail)
        seen = {e["source"]["entry_id"] for e in read_cdc(endpoints, ns.name, 0, idle_timeout=10, from_beginning=True)}
        assert {e.entry_id for e in entries} - seen == set()  # every entry changed its key: each has its event
        assert a.alive()
    finally:
        writer.close()
        b.stop()
        a.stop()
        ns.drop(session, es)
