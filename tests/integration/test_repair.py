"""Repair on the real stack: verify finds corruption key by key, replay and backfill repair it (also under live
writes), reindex moves the search index to a new mapping under live writes, and the errors that stop a repair
before it writes anything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from elasticsearch import ConflictError, Elasticsearch, NotFoundError
from elasticsearch.helpers import bulk

from connectors.elasticsearch.generations import layout
from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.model import Op, WalEntry
from streams.namespaces import load_namespace
from streams.worker.targets import apply_namespaces
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
    namespace_document,
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


class SteadyWriter(threading.Thread):
    """Writes entries through the SDK at a steady rate over a fixed set of keys until stopped; keeps every entry
    it wrote (each acknowledged durable) for the model."""

    def __init__(self, ns: ScratchNamespace, bootstrap: str, rate: float, keys: int, fields: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self._writer = SyncWalWriter(bootstrap, {ns.name: ns.namespace})
        self._ns, self._rate, self._keys, self._fields = ns.name, rate, keys, fields
        self._stop_event = threading.Event()
        self.entries: list[WalEntry] = []
        self.seconds = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(7)
        started = time.monotonic()
        pending = []
        try:
            while not self._stop_event.is_set():
                due = int((time.monotonic() - started) * self._rate) - len(self.entries)
                for _ in range(max(0, due)):
                    key = f"k{rnd.randrange(self._keys)}"
                    if rnd.random() < 0.1:
                        entry = self._writer.prepare(self._ns, key, Op.DELETE)
                    else:
                        n = len(self.entries)
                        values = {"color": rnd.choice(["red", "blue"]), "qty": n, "size": rnd.choice(["S", "M", "L"])}
                        entry = self._writer.prepare(self._ns, key, Op.UPSERT, {f: values[f] for f in self._fields})
                    self.entries.append(entry)
                    pending.append(self._writer.submit_entry(entry))
                time.sleep(0.02)
            self.seconds = time.monotonic() - started
            failed = [r for r in (f.result(timeout=120) for f in pending) if not r.ok]
            assert not failed, failed[:3]
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
        finally:
            self._writer.close()

    def stop(self) -> list[WalEntry]:
        self._stop_event.set()
        self.join(timeout=180)
        assert not self.is_alive() and self.error is None, self.error
        return self.entries

    @property
    def rate(self) -> float:
        return len(self.entries) / self.seconds if self.seconds else 0.0


def _sized_namespace(endpoints: Endpoints, directory: Path) -> ScratchNamespace:
    """A namespace whose primary store keeps a `size` column that its index does not map yet, and whose file then
    lists `size` among the index's fields, as an operator does before a reindex: the workers write the field, which
    the first generation keeps in the source without indexing it."""
    name = f"t{uuid.uuid4().hex[:10]}"
    document = namespace_document(name)
    document["targets"]["primary"]["columns"]["size"] = {"type": "text"}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    asyncio.run(apply_namespaces([load_namespace(path)], endpoints))
    document["targets"]["search"]["fields"]["size"] = "keyword"
    path.write_text(yaml.safe_dump(document))
    return ScratchNamespace(load_namespace(path), directory, endpoints)


def test_reindex_under_live_writes_moves_the_alias_and_loses_nothing(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = _sized_namespace(endpoints, tmp_path / "namespaces")
    worker = None
    try:
        assert layout(es, ns.index).indices == (f"{ns.index}-g1",)  # `namespaces apply` made generation 1
        worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
        traffic = SteadyWriter(ns, endpoints.kafka_bootstrap, 200, 3000, ("color", "qty", "size"))
        traffic.start()
        wait_until(lambda: len(traffic.entries) > 3000, 120, "a first share of the traffic")
        mapping = tmp_path / "mapping.yaml"
        mapping.write_text(yaml.safe_dump({"fields": {"color": "keyword", "qty": "long", "size": "keyword"}}))
        env = _env(ns, tmp_path / "data")
        moved = _walstream(env, "reindex", ns.name, "--mapping", str(mapping), "--grace-s", "5", "--ranges", "16")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        for step in ("step 1/5", "step 2/5", "step 3/5", "step 4/5", "step 5/5"):
            assert step in moved.stderr, moved.stderr
        time.sleep(3)  # writes go on after the swap too
        entries = traffic.stop()
        model = model_of(entries)
        expected = expected_rows(model)
        wait_until(
            lambda: cassandra_rows(session, ns.keyspace) == expected and es_docs(es, ns.index) == expected,
            240,
            "both stores to hold the model",
            worker.tail,
        )
        after = layout(es, ns.index)
        assert (after.kind, after.indices, after.write_index) == ("alias", (f"{ns.index}-g2",), f"{ns.index}-g2")
        assert es.indices.exists(index=f"{ns.index}-g1")  # kept until --drop-old
        clean = _walstream(env, "verify", ns.name, "--grace-s", "0")
        assert clean.returncode == 0, clean.stdout + clean.stderr
        # The new field is searchable on every document, backfilled or written live.
        for size in ("S", "M", "L"):
            hits = es.count(index=ns.index, query={"term": {"size": size}})["count"]
            assert hits == sum(1 for v in model.values() if v is not None and v["size"] == size), size
        print(f"reindex under {traffic.rate:.0f} entries/s of live writes ({len(entries)} entries)")
    finally:
        if worker is not None:
            worker.stop()
        ns.drop(*stores)


def test_reindex_refuses_a_bad_mapping_file_before_anything_is_made(
    scratch: ScratchNamespace, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    _, es = stores
    ns = scratch
    env = _env(ns, tmp_path / "data")
    cases = {
        "fields: {color: keyword, qty: tiny}": "fields.qty",
        "fields: {color: keyword}\nanalysis: {}": "unknown key(s) analysis",
        "fields: {color: keyword, qty: long, weight: long}": "weight are not stored by primary",
        "[1, 2": "is not YAML",
    }
    for text, problem in cases.items():
        mapping = tmp_path / "mapping.yaml"
        mapping.write_text(text)
        run = _walstream(env, "reindex", ns.name, "--mapping", str(mapping))
        assert run.returncode == 2 and problem in run.stderr, (text, run.stderr)
    missing = _walstream(env, "reindex", ns.name, "--mapping", str(tmp_path / "nowhere.yaml"))
    assert missing.returncode == 2 and "cannot be read" in missing.stderr, missing.stderr
    unknown = _walstream(env, "reindex", "nosuchnamespace", "--mapping", str(tmp_path / "mapping.yaml"))
    assert unknown.returncode == 2 and "unknown namespace" in unknown.stderr, unknown.stderr
    assert layout(es, ns.index).indices == (f"{ns.index}-g1",)
    assert not es.indices.exists(index=f"{ns.index}-g2")


def test_backfill_and_replay_under_live_writes_never_undo_a_newer_write(
    scratch: ScratchNamespace, stores: tuple[Session, Elasticsearch], endpoints: Endpoints, tmp_path: Path
) -> None:
    session, es = stores
    ns = scratch
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 60))
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    try:
        traffic = SteadyWriter(ns, endpoints.kafka_bootstrap, LIVE_RATE, 2000, ("color", "qty"))
        traffic.start()
        wait_until(lambda: len(traffic.entries) > 4000, 120, "a first share of the traffic")
        # Lose 100 documents of the index (deleted at their own version) while the traffic goes on.
        held = es.search(index=ns.index, size=100, version=True, query={"match_all": {}})["hits"]["hits"]
        for hit in held:
            with contextlib.suppress(ConflictError, NotFoundError):
                es.delete(index=ns.index, id=hit["_id"], version=hit["_version"], version_type="external_gte")
        env = _env(ns, tmp_path / "data")
        filled = _walstream(env, "backfill", ns.name, "--from", "primary", "--to", "search", "--ranges", "16")
        assert filled.returncode == 0, filled.stdout + filled.stderr
        replayed = _walstream(env, "replay", ns.name, "--from", since)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        entries = traffic.stop()
        expected = expected_rows(model_of(entries))
        wait_until(
            lambda: cassandra_rows(session, ns.keyspace) == expected and es_docs(es, ns.index) == expected,
            240,
            "both stores to hold the model",
            worker.tail,
        )
        clean = _walstream(env, "verify", ns.name, "--grace-s", "0")
        assert clean.returncode == 0, clean.stdout + clean.stderr
        print(f"backfill and replay under {traffic.rate:.0f} entries/s of live writes ({len(entries)} entries)")
    finally:
        worker.stop()


#: Entries per second written during the live-traffic repairs: what one worker sustains on the 2-core
#: development machine while backfill and replay run next to it (the issue's 1,000/s needs more cores).
LIVE_RATE = 300


def _reindex_stopped_halfway(env: dict[str, str], name: str, mapping: Path, meanwhile: Callable[[], None]) -> None:
    """Run a slow reindex (50 rows/s of backfill), call ``meanwhile`` once it backfills (the writes have moved to
    the new generation), then kill it by its pid: a reindex stopped half-way."""
    command = [sys.executable, "-m", "streams", "reindex", name, "--mapping", str(mapping), "--rate", "50"]
    slow = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert slow.stderr is not None
        for line in slow.stderr:
            seen.append(line)
            if "step 3/5" in line:
                break
        meanwhile()
    finally:
        slow.kill()
        slow.wait(30)
    assert any("step 3/5" in line for line in seen), "".join(seen)


@dataclass
class Halfway:
    """A namespace with a running worker, 1,600 entries applied, and a reindex to ``mapping`` that was killed
    after it moved the writes to generation 2 (which took the last 100 entries while the backfill crawled)."""

    ns: ScratchNamespace
    es: Elasticsearch
    env: dict[str, str]
    mapping: Path
    worker: WorkerProcess
    write: Callable[[int], None]
    converged: Callable[[], bool]
    entries: list[WalEntry]


@contextlib.contextmanager
def _halfway_reindex(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path, size: str
) -> Iterator[Halfway]:
    session, es = stores
    ns = _sized_namespace(endpoints, tmp_path / "namespaces")
    entries: list[WalEntry] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(ns.drop, *stores)
        writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
        cleanup.callback(writer.close)
        worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
        cleanup.callback(worker.stop)

        def write(count: int) -> None:
            first = len(entries)
            values = [{"color": "red", "qty": first + i, "size": size} for i in range(count)]
            batch = [writer.prepare(ns.name, f"k{i % 700}", Op.UPSERT, v) for i, v in enumerate(values)]
            _write(writer, batch)
            entries.extend(batch)

        def converged() -> bool:
            expected = expected_rows(model_of(entries))
            return cassandra_rows(session, ns.keyspace) == expected and es_docs(es, ns.index) == expected

        write(1500)
        wait_until(converged, 240, "the first entries in both stores", worker.tail)
        mapping = tmp_path / "mapping.yaml"
        mapping.write_text(yaml.safe_dump({"fields": {"color": "keyword", "qty": "long", "size": "keyword"}}))
        env = _env(ns, tmp_path / "data")
        _reindex_stopped_halfway(env, ns.name, mapping, lambda: write(100))
        halfway = layout(es, ns.index)
        assert halfway.write_index == f"{ns.index}-g2" and set(halfway.indices) == {f"{ns.index}-g1", f"{ns.index}-g2"}
        yield Halfway(ns, es, env, mapping, worker, write, converged, entries)


def test_a_stopped_reindex_rolls_back_and_a_second_one_drops_the_old_generation(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    """A reindex killed after it moved the writes (step 3, backfilling slowly) leaves the alias reading two
    generations; `--rollback` gives the writes back to generation 1 and deletes generation 2, and the index
    holds every write, including those generation 2 took meanwhile. A reindex run to the end with `--drop-old`
    then leaves only its new generation."""
    with _halfway_reindex(endpoints, stores, tmp_path, "M") as h:
        index, es = h.ns.index, h.es
        back = _walstream(h.env, "reindex", h.ns.name, "--rollback")
        assert back.returncode == 0, back.stdout + back.stderr
        after = layout(es, index)
        assert (after.indices, after.write_index) == ((f"{index}-g1",), f"{index}-g1")
        assert not es.indices.exists(index=f"{index}-g2")
        h.write(100)
        wait_until(h.converged, 240, "every write in both stores after the rollback", h.worker.tail)
        assert _walstream(h.env, "verify", h.ns.name, "--grace-s", "0").returncode == 0

        moved = _walstream(h.env, "reindex", h.ns.name, "--mapping", str(h.mapping), "--grace-s", "0", "--drop-old")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        final = layout(es, index)
        assert final.indices == (final.write_index,) and final.write_index != f"{index}-g1"
        assert not es.indices.exists(index=f"{index}-g1")
        wait_until(h.converged, 240, "both stores after the second reindex", h.worker.tail)
        assert es.count(index=index, query={"term": {"size": "M"}})["count"] == len(model_of(h.entries))


def test_a_stopped_reindex_run_again_resumes_and_finishes(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    """The same command run again after a reindex stopped half-way picks up where it stopped (the alias reading
    two generations) and finishes: generation 2 alone behind the alias, every write in it."""
    with _halfway_reindex(endpoints, stores, tmp_path, "L") as h:
        index, es = h.ns.index, h.es
        again = _walstream(h.env, "reindex", h.ns.name, "--mapping", str(h.mapping), "--grace-s", "0")
        assert again.returncode == 0, again.stdout + again.stderr
        final = layout(es, index)
        assert (final.indices, final.write_index) == ((f"{index}-g2",), f"{index}-g2")
        wait_until(h.converged, 240, "every write in both stores", h.worker.tail)
        assert _walstream(h.env, "verify", h.ns.name, "--grace-s", "0").returncode == 0
        assert es.count(index=index, query={"term": {"size": "L"}})["count"] == len(model_of(h.entries))
