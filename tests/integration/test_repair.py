"""Repair on the real stack: verify finds corruption key by key, replay and backfill repair it, and the errors that
stop a repair before it writes anything."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from elasticsearch import Elasticsearch
from elasticsearch.helpers import bulk

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.model import Op, WalEntry
from tests.integration.pipeline import (
    REPO,
    ScratchNamespace,
    WorkerProcess,
    cassandra_rows,
    create_namespace,
    es_docs,
    expected_rows,
    free_port,
    model_of,
    wait_until,
)

pytestmark = pytest.mark.integration


def _env(ns: ScratchNamespace, data_dir: Path, **overrides: str) -> dict[str, str]:
    eps = ns.endpoints
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        "WALSTREAM_NAMESPACE_DIR": str(ns.directory),
        "WALSTREAM_DATA_DIR": str(data_dir),
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_BOOTSTRAP": eps.kafka_bootstrap,
        "WALSTREAM_CASSANDRA_CONTACT": f"{eps.cassandra_host}:{eps.cassandra_port}",
        "WALSTREAM_ELASTICSEARCH_URL": eps.elasticsearch_url,
        **overrides,
    }


def _walstream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def _write(writer: SyncWalWriter, entries: list[WalEntry]) -> None:
    results = [f.result(timeout=60) for f in [writer.submit_entry(e) for e in entries]]
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]


def _drift(report: dict[str, Any], target: str, kind: str) -> set[str]:
    found = report["drift"][target][kind]
    assert found["count"] == len(found["examples"]), found["count"]
    return {e["key"] for e in found["examples"]}


@pytest.fixture
def scratch(endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path) -> Iterator[ScratchNamespace]:
    ns = create_namespace(endpoints, tmp_path / "namespaces")
    yield ns
    ns.drop(*stores)


def test_verify_finds_corruption_and_replay_and_backfill_repair_it(
    scratch: ScratchNamespace, stores: tuple[Session, Elasticsearch], endpoints: Endpoints, tmp_path: Path
) -> None:
    session, es = stores
    ns = scratch
    started_ms = int(time.time() * 1000) - 60_000
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    rnd = random.Random(15)
    try:
        history = []
        for i in range(3000):
            key = f"k{rnd.randrange(1000)}"
            if rnd.random() < 0.1:
                history.append(writer.prepare(ns.name, key, Op.DELETE))
            else:
                history.append(
                    writer.prepare(ns.name, key, Op.UPSERT, {"color": rnd.choice(["red", "blue"]), "qty": i})
                )
        _write(writer, history)
        live = sorted(k for k, v in model_of(history).items() if v is not None)
        picked = rnd.sample(live, 400)
        search_lost, search_stale, primary_lost = set(picked[:100]), set(picked[100:200]), set(picked[200:300])
        # The index misses the newest write of 100 keys: entries for the primary store only.
        newer = [
            writer.prepare(ns.name, k, Op.UPSERT, {"color": "green", "qty": -1}, targets=["primary"])
            for k in sorted(search_stale)
        ]
        _write(writer, newer)
    finally:
        writer.close()
    model = model_of([*history, *newer])
    expected = expected_rows(model)
    wait_until(
        lambda: (
            cassandra_rows(session, ns.keyspace) == expected
            and es_docs(es, ns.index) == expected_rows(model_of(history))
        ),
        180,
        "the worker to apply every entry",
        worker.tail,
    )
    worker.stop()

    # Corrupt the index: 100 documents lost (deleted at their own version, as an index that keeps no newer version
    # of them, restored from a snapshot or past index.gc_deletes), 50 documents the log never had.
    versions = {d["_id"]: d["_version"] for d in es.mget(index=ns.index, ids=sorted(search_lost))["docs"]}
    for key in sorted(search_lost):
        es.delete(index=ns.index, id=key, version=versions[key], version_type="external_gte")
    extra = {f"extra{i}" for i in range(50)}
    stamp = int(time.time() * 1_000_000) - 120_000_000
    bulk(
        es,
        (
            {"_index": ns.index, "_id": k, "_version": stamp, "_version_type": "external", "color": "junk", "qty": 0}
            for k in sorted(extra)
        ),
    )
    # Corrupt the primary store: 100 rows lost without a trace (the table truncated and restored without them).
    rows = list(session.execute(f"SELECT id, color, qty, writetime(color) AS v FROM {ns.keyspace}.items"))
    session.execute(f"TRUNCATE {ns.keyspace}.items")
    insert = session.prepare(f"INSERT INTO {ns.keyspace}.items (id, color, qty) VALUES (?, ?, ?) USING TIMESTAMP ?")
    execute_concurrent_with_args(
        session, insert, [(r.id, r.color, r.qty, r.v) for r in rows if r.id not in primary_lost], concurrency=32
    )
    es.indices.refresh(index=ns.index)

    env = _env(ns, tmp_path / "data")
    found = _walstream(env, "verify", ns.name, "--json", "--grace-s", "0", "--examples", "1000", "--ranges", "8")
    assert found.returncode == 1, found.stdout + found.stderr
    report = json.loads(found.stdout)
    assert _drift(report, "search", "missing") == search_lost
    assert _drift(report, "search", "stale") == search_stale
    assert _drift(report, "search", "extra") == extra
    assert _drift(report, "primary", "missing") == primary_lost
    assert _drift(report, "primary", "stale") == set()
    assert _drift(report, "primary", "extra") == set()
    assert report["scanned"] == {"primary": len(expected) - 100, "search": len(expected) - 100 + 50}

    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started_ms / 1000))
    replayed = _walstream(env, "replay", ns.name, "--from", since, "--targets", "primary")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "no change events published" in replayed.stdout
    assert cassandra_rows(session, ns.keyspace) == expected

    filled = _walstream(env, "backfill", ns.name, "--from", "primary", "--to", "search", "--prune", "--rate", "20000")
    assert filled.returncode == 0, filled.stdout + filled.stderr
    assert not list((tmp_path / "data" / "repair").glob("*.json"))  # finished: no resume point is left

    clean = _walstream(env, "verify", ns.name, "--grace-s", "0")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert cassandra_rows(session, ns.keyspace) == expected
    assert es_docs(es, ns.index) == expected


def test_backfill_resumes_after_the_last_finished_token_range(
    scratch: ScratchNamespace, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = scratch
    insert = session.prepare(f"INSERT INTO {ns.keyspace}.items (id, color, qty) VALUES (?, ?, ?) USING TIMESTAMP ?")
    rows = [(f"r{i}", "red", i, 1_000_000 + i) for i in range(2000)]
    execute_concurrent_with_args(session, insert, rows, concurrency=32)
    state = tmp_path / "state.json"
    # As if an earlier run had finished the first half of the ranges.
    state.write_text(
        json.dumps({"namespace": ns.name, "from": "primary", "to": "search", "ranges": 8, "next_range": 4})
    )
    env = _env(ns, tmp_path / "data")
    backfill = ("backfill", ns.name, "--from", "primary", "--to", "search", "--state", str(state))
    run = _walstream(env, *backfill, "--ranges", "8")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "resuming at token range 4" in run.stderr
    token = {r.id: r.t for r in session.execute(f"SELECT id, token(id) AS t FROM {ns.keyspace}.items")}
    upper_half = {k for k, t in token.items() if t > 0}  # ranges 4..7 of 8 cover the positive tokens
    docs = es_docs(es, ns.index)
    assert set(docs) == upper_half
    assert not state.exists()
    again = _walstream(env, *backfill)
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(es_docs(es, ns.index)) == set(token)
    versions = {d["_id"]: d["_version"] for d in es.mget(index=ns.index, ids=["r0", "r1999"])["docs"]}
    assert versions == {"r0": 1_000_000, "r1999": 1_001_999}


def test_errors_stop_before_anything_is_written(
    scratch: ScratchNamespace, stores: tuple[Session, Elasticsearch], endpoints: Endpoints, tmp_path: Path
) -> None:
    session, es = stores
    ns = scratch
    env = _env(ns, tmp_path / "data")

    unknown = _walstream(env, "verify", "nosuchnamespace")
    assert unknown.returncode == 2 and "unknown namespace 'nosuchnamespace'" in unknown.stderr, unknown.stderr

    # Retention removed the oldest entries of every partition: a range that starts before them is refused.
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        _write(writer, [writer.prepare(ns.name, f"k{i}", Op.UPSERT, {"color": "red", "qty": i}) for i in range(60)])
    finally:
        writer.close()
    topic = topics.wal_topic(ns.name)
    ends = KafkaAdmin(endpoints.kafka).end_offsets(topic)
    admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})
    futures = admin.delete_records([TopicPartition(topic, p, end - 1) for p, end in ends.items()])
    for future in futures.values():
        future.result(timeout=30)
    gone = _walstream(env, "replay", ns.name, "--from", "1h")
    assert gone.returncode == 2, gone.stdout + gone.stderr
    assert "before the log's retention" in gone.stderr, gone.stderr

    # A store that does not answer: a clear message, exit 2, no resume file, nothing written anywhere.
    closed = f"127.0.0.1:{free_port()}"
    away = _walstream({**env, "WALSTREAM_CASSANDRA_CONTACT": closed}, "verify", ns.name)
    assert away.returncode == 2 and f"Cassandra at {closed} does not answer" in away.stderr, away.stderr
    url = f"http://127.0.0.1:{free_port()}"
    away = _walstream(
        {**env, "WALSTREAM_ELASTICSEARCH_URL": url}, "backfill", ns.name, "--from", "primary", "--to", "search"
    )
    assert away.returncode == 2 and f"Elasticsearch at {url} does not answer" in away.stderr, away.stderr
    away = _walstream({**env, "WALSTREAM_ELASTICSEARCH_URL": url}, "replay", ns.name, "--from", "10m")
    assert away.returncode == 2 and f"Elasticsearch at {url} does not answer" in away.stderr, away.stderr
    assert not (tmp_path / "data" / "repair").exists()
    assert cassandra_rows(session, ns.keyspace) == {}
    assert es_docs(es, ns.index) == {}


def test_retention_is_shown_and_applied_to_the_log_topic(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

    ns = create_namespace(endpoints, tmp_path / "namespaces", retention="2d")
    try:
        admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})

        def retention_ms() -> str:
            resource = ConfigResource(ResourceType.TOPIC, topics.wal_topic(ns.name))
            (future,) = admin.describe_configs([resource]).values()
            return str(future.result(timeout=30)["retention.ms"].value)

        assert retention_ms() == str(2 * 86_400_000)
        env = _env(ns, tmp_path / "data")
        shown = _walstream(env, "namespaces", "validate")
        assert shown.returncode == 0 and "log retention 2d" in shown.stdout, shown.stdout + shown.stderr
        # A changed setting reaches the topic that exists already.
        path = ns.directory / f"{ns.name}.yaml"
        path.write_text(path.read_text().replace("retention: 2d", "retention: 36h"))
        applied = _walstream(env, "namespaces", "apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert retention_ms() == str(36 * 3_600_000)
    finally:
        ns.drop(*stores)
