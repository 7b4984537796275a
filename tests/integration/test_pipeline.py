"""End to end on the real stack: SDK → Kafka → worker → Cassandra + Elasticsearch + CDC."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cassandra.cluster import Session
from confluent_kafka import Producer
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.codec import Codec
from streams.model import Op, WalEntry
from streams.tools.cdc import read_cdc
from tests.integration.pipeline import (
    ScratchNamespace,
    WorkerProcess,
    cassandra_rows,
    create_namespace,
    es_docs,
    expected_rows,
    model_of,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ScratchNamespace, WorkerProcess]]:
    """One namespace with a worker running for the tests of this module that only add data."""
    base = tmp_path_factory.mktemp("live")
    ns = create_namespace(endpoints, base / "namespaces")
    worker = WorkerProcess(ns, base / "data", base / "worker.log").start()
    yield ns, worker
    worker.stop()
    ns.drop(*stores)


def _history(writer: SyncWalWriter, ns: str, count: int, keys: int, seed: int) -> list[WalEntry]:
    rnd = random.Random(seed)
    entries = []
    for i in range(count):
        key = f"k{rnd.randrange(keys)}"
        if rnd.random() < 0.2:
            entries.append(writer.prepare(ns, key, Op.DELETE))
        else:
            entries.append(writer.prepare(ns, key, Op.UPSERT, {"color": rnd.choice(["red", "blue"]), "qty": i}))
    return entries


def _write_all(writer: SyncWalWriter, entries: list[WalEntry]) -> None:
    futures = [writer.submit_entry(e) for e in entries]
    results = [f.result(timeout=60) for f in futures]
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]


def _converged(
    ns: ScratchNamespace, stores: tuple[Session, Elasticsearch], expected: dict[str, tuple[object, ...]]
) -> bool:
    session, es = stores
    return cassandra_rows(session, ns.keyspace) == expected and es_docs(es, ns.index) == expected


def _diagnose(
    ns: ScratchNamespace,
    stores: tuple[Session, Elasticsearch],
    worker: WorkerProcess,
    expected: dict[str, tuple[object, ...]],
) -> str:
    session, es = stores
    rows, docs = cassandra_rows(session, ns.keyspace), es_docs(es, ns.index)
    return (
        f"expected {len(expected)} keys; cassandra has {len(rows)} "
        f"({sum(rows.get(k) == v for k, v in expected.items())} "
        f"right), elasticsearch {len(docs)} ({sum(docs.get(k) == v for k, v in expected.items())} right)\n"
        f"worker log:\n{worker.tail()}"
    )


def test_entries_converge_to_their_newest_version_with_cdc(
    live: tuple[ScratchNamespace, WorkerProcess], stores: tuple[Session, Elasticsearch], endpoints: Endpoints
) -> None:
    ns, worker = live
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        entries = _history(writer, ns.name, 3000, 300, seed=1)
        _write_all(writer, entries)
    finally:
        writer.close()
    expected = expected_rows(model_of(entries))
    wait_until(
        lambda: _converged(ns, stores, expected), 120, "convergence", lambda: _diagnose(ns, stores, worker, expected)
    )

    # Entries of one key are in one partition and in order, so every entry but a delete of an absent key changes
    # its key: one event each, with c for a key's first version (or the first after a delete), u after it, d for
    # a delete of a live key.
    changing = _changing(entries)
    events = list(read_cdc(endpoints, ns.name, len(changing), idle_timeout=20, from_beginning=True))
    assert sorted(e["source"]["entry_id"] for e in events) == sorted(e.entry_id for e in changing)
    exists: dict[str, bool] = {}
    by_id = {e.entry_id: e for e in entries}
    for event in sorted(events, key=lambda ev: by_id[ev["source"]["entry_id"]].sequence):
        entry = by_id[event["source"]["entry_id"]]
        want = "d" if entry.op is Op.DELETE else "u" if exists.get(entry.key) else "c"
        assert event["op"] == want, (event, entry)
        assert event["source"]["sequence"] == entry.sequence
        exists[entry.key] = entry.op is Op.UPSERT


def _changing(entries: list[WalEntry]) -> list[WalEntry]:
    """The entries that change their key when applied in order: all upserts, and deletes of live keys."""
    live: dict[str, bool] = {}
    changing = []
    for entry in entries:
        if entry.op is Op.UPSERT or live.get(entry.key):
            changing.append(entry)
        live[entry.key] = entry.op is Op.UPSERT
    return changing


def test_replayed_entries_change_nothing_and_publish_nothing(
    live: tuple[ScratchNamespace, WorkerProcess], stores: tuple[Session, Elasticsearch], endpoints: Endpoints
) -> None:
    ns, worker = live
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        entries = [writer.prepare(ns.name, f"r{i}", Op.UPSERT, {"color": "green", "qty": i}) for i in range(200)]
        _write_all(writer, entries)
        expected_now = {**cassandra_rows(stores[0], ns.keyspace)}
        expected_now.update({e.key: ("green", i) for i, e in enumerate(entries)})
        wait_until(
            lambda: _converged(ns, stores, expected_now),
            60,
            "first delivery",
            lambda: _diagnose(ns, stores, worker, expected_now),
        )
        cdc_before = sum(1 for _ in read_cdc(endpoints, ns.name, 0, idle_timeout=5, from_beginning=True))
        # The same entries again (same ids, same sequences), as a replay or a producer retry would send them.
        _write_all(writer, entries + entries[:50])
        marker = writer.prepare(ns.name, "replay-marker", Op.UPSERT, {"color": "black", "qty": 1})
        _write_all(writer, [marker])
    finally:
        writer.close()
    expected_now["replay-marker"] = ("black", 1)
    wait_until(
        lambda: _converged(ns, stores, expected_now),
        60,
        "the marker",
        lambda: _diagnose(ns, stores, worker, expected_now),
    )
    cdc_after = sum(1 for _ in read_cdc(endpoints, ns.name, 0, idle_timeout=5, from_beginning=True))
    assert cdc_after == cdc_before + 1  # only the marker was a change


def test_an_undecodable_record_goes_to_the_dlq_and_does_not_stall_its_partition(
    live: tuple[ScratchNamespace, WorkerProcess], stores: tuple[Session, Elasticsearch], endpoints: Endpoints
) -> None:
    ns, worker = live
    raw = Producer({"bootstrap.servers": endpoints.kafka_bootstrap})
    garbage = [b"\x00\x01garbage", b"\xc3\x01" + b"\x00" * 8 + b"body", b'{"not": "avro"}']
    for partition in range(ns.namespace.partitions):
        for junk in garbage:
            raw.produce(topics.wal_topic(ns.name), key=b"junk", value=junk, partition=partition)
    assert raw.flush(30) == 0
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        behind = [writer.prepare(ns.name, f"after-junk-{i}", Op.UPSERT, {"color": "pink", "qty": i}) for i in range(60)]
        _write_all(writer, behind)
    finally:
        writer.close()
    session, es = stores

    def applied() -> bool:
        rows = cassandra_rows(session, ns.keyspace)
        docs = es_docs(es, ns.index)
        return all(rows.get(e.key) == ("pink", i) and docs.get(e.key) == ("pink", i) for i, e in enumerate(behind))

    wait_until(applied, 60, "the entries behind the junk", lambda: worker.tail())
    assert worker.alive(), worker.tail()

    codec = Codec()
    from confluent_kafka import Consumer

    consumer = Consumer(
        {"bootstrap.servers": endpoints.kafka_bootstrap, "group.id": f"dlq-{ns.name}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topics.dlq_topic(ns.name)])
    letters = []
    deadline_polls = 60
    while len(letters) < len(garbage) * ns.namespace.partitions and deadline_polls:
        msg = consumer.poll(1.0)
        if msg is None:
            deadline_polls -= 1
            continue
        letters.append(codec.decode_dead_letter(msg.value()))
    consumer.close()
    assert sorted(letter.raw for letter in letters) == sorted(garbage * ns.namespace.partitions)
    assert {letter.error_class for letter in letters} == {"undecodable"}
    assert all(letter.reason for letter in letters)


def test_cdc_tail_prints_change_events(live: tuple[ScratchNamespace, WorkerProcess], endpoints: Endpoints) -> None:
    ns, _ = live
    env_cmd = [
        sys.executable,
        "-m",
        "streams",
        "cdc",
        "tail",
        ns.name,
        "--from-beginning",
        "--max",
        "5",
        "--timeout",
        "30",
    ]
    import os

    env = {**os.environ, "WALSTREAM_STACK_MODE": "external", "WALSTREAM_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap}
    out = subprocess.run(env_cmd, capture_output=True, text=True, timeout=90, env=env, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 5
    assert all(line["op"] in {"c", "u", "d"} and line["source"]["namespace"] == ns.name for line in lines)


def test_a_worker_killed_mid_stream_loses_nothing_after_restart(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    ns = create_namespace(endpoints, tmp_path / "namespaces")
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log")
    try:
        writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
        try:
            # A backlog the worker cannot clear between two looks at the table, however fast the machine.
            entries = _history(writer, ns.name, 30_000, 500, seed=7)
            _write_all(writer, entries)
        finally:
            writer.close()
        expected = expected_rows(model_of(entries))
        worker.start()
        session, _ = stores
        # Kill it once it has applied part of the stream, but not all of it.
        wait_until(lambda: len(cassandra_rows(session, ns.keyspace)) > 0, 90, "the first rows", worker.tail)
        worker.kill()
        assert not _converged(ns, stores, expected), "the worker finished before it could be killed mid-stream"
        worker.start()
        wait_until(
            lambda: _converged(ns, stores, expected),
            180,
            "convergence after the restart",
            lambda: _diagnose(ns, stores, worker, expected),
        )
        # No entry was lost on the way: each that changed its key has its change event (a replay after the kill
        # may repeat some; none is missing).
        seen = {e["source"]["entry_id"] for e in read_cdc(endpoints, ns.name, 0, idle_timeout=10, from_beginning=True)}
        assert {e.entry_id for e in _changing(entries)} - seen == set()
    finally:
        worker.stop()
        ns.drop(*stores)
