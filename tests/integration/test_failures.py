"""Failures never block: outages, an exhausted retry budget with DLQ replay, poison records, retry rebalances."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer, Producer
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.local.stack import LocalStack
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.codec import Codec
from streams.config import Settings, StackMode
from streams.model import DeadLetter, Op, Origin, RetryEnvelope, new_entry
from tests.integration.pipeline import (
    REPO,
    ScratchNamespace,
    WorkerProcess,
    cassandra_rows,
    create_namespace,
    es_docs,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(settings: Settings, endpoints: Endpoints) -> LocalStack:
    if settings.mode is not StackMode.LOCAL:
        pytest.skip("outages are made by freezing the local stack's own processes")
    return LocalStack(settings.local)


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _counter(metrics: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in metrics.items() if k.startswith(name + "{") and all(w in k for w in want))


def _dead_letters(endpoints: Endpoints, ns: str, at_least: int, timeout: float) -> list[tuple[DeadLetter, int]]:
    """(letter, broker timestamp ms) of the DLQ, read until ``at_least`` arrived or ``timeout`` passed."""
    codec = Codec()
    consumer = Consumer(
        {
            "bootstrap.servers": endpoints.kafka_bootstrap,
            "group.id": f"dlq-{time.time_ns()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topics.dlq_topic(ns)])
    found: list[tuple[DeadLetter, int]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < at_least and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            found.append((codec.decode_dead_letter(msg.value()), msg.timestamp()[1]))
    finally:
        consumer.close()
    return found


def _write(endpoints: Endpoints, ns: ScratchNamespace, entries: list) -> None:  # type: ignore[type-arg]
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        futures = [writer.submit_entry(e) for e in entries]
        assert all(f.result(60).ok for f in futures)
    finally:
        writer.close()


def test_elasticsearch_outage_cassandra_keeps_up_and_retries_bring_search_level(
    stack: LocalStack, endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", retry={"tiers": ["1s", "5s", "10s"], "max_attempts": 20})
    port = free_port()
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log", metrics_port=port).start()
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        warm = writer.prepare(ns.name, "warm-up", Op.UPSERT, {"color": "white", "qty": 0})
        _write(endpoints, ns, [warm])
        wait_until(lambda: "warm-up" in es_docs(es, ns.index), 90, "the worker to start", worker.tail)

        entries = [writer.prepare(ns.name, f"k{i}", Op.UPSERT, {"color": "red", "qty": i}) for i in range(10_000)]
        frozen = stack.signal_service("elasticsearch", signal.SIGSTOP)
        outage_started = time.monotonic()
        try:
            for start in range(0, len(entries), 500):  # the entries flow during the outage
                _write(endpoints, ns, entries[start : start + 500])
                time.sleep(0.5)
            # Cassandra keeps up while search is down: every entry reaches it with Elasticsearch still frozen
            # (the freeze lasts as long as that takes, up to a generous bound, and at least 30 s).
            wait_until(
                lambda: len(cassandra_rows(session, ns.keyspace)) == len(entries) + 1,
                300,
                "cassandra to hold every entry while elasticsearch is frozen",
                worker.tail,
            )
            time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        expected = {e.key: ("red", i) for i, e in enumerate(entries)} | {"warm-up": ("white", 0)}
        wait_until(lambda: es_docs(es, ns.index) == expected, 180, "retries to bring search level", worker.tail)
        assert cassandra_rows(session, ns.keyspace) == expected
        assert _dead_letters(endpoints, ns.name, 1, timeout=5) == []

        metrics = _metrics(port)
        # A partial success is retried on the failed target only: Cassandra was written once per entry.
        assert _counter(metrics, "walstream_entries_total", target="primary", outcome="applied") == len(expected)
        search_done = _counter(metrics, "walstream_entries_total", target="search", outcome="applied")
        assert search_done == len(expected)
        assert _counter(metrics, "walstream_retries_total", namespace=ns.name) > 0
    finally:
        writer.close()
        worker.stop()
        ns.drop(session, es)


def test_cassandra_outage_past_the_retry_budget_lands_in_the_dlq_and_replay_levels(
    stack: LocalStack, endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(
        endpoints, tmp_path / "ns", retry={"tiers": ["1s", "2s"], "backoff_multiplier": 1.0, "max_attempts": 3}
    )
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        warm = writer.prepare(ns.name, "warm-up", Op.UPSERT, {"color": "white", "qty": 0})
        _write(endpoints, ns, [warm])
        wait_until(lambda: "warm-up" in cassandra_rows(session, ns.keyspace), 90, "the worker to start", worker.tail)
        entries = [writer.prepare(ns.name, f"c{i}", Op.UPSERT, {"color": "blue", "qty": i}) for i in range(300)]
        frozen = stack.signal_service("cassandra", signal.SIGSTOP)
        try:
            _write(endpoints, ns, entries)
            letters = _dead_letters(endpoints, ns.name, len(entries), timeout=120)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert len(letters) == len(entries), worker.tail()
        assert {d.error_class for d, _ in letters} == {"exhausted"}
        assert all(d.pending_targets == ("primary",) and d.attempts == 3 and d.reason for d, _ in letters)
        assert sorted(d.entry.entry_id for d, _ in letters if d.entry) == sorted(e.entry_id for e in entries)
        expected = {e.key: ("blue", i) for i, e in enumerate(entries)} | {"warm-up": ("white", 0)}
        wait_until(lambda: es_docs(es, ns.index) == expected, 60, "search, which was up throughout")

        wait_until(lambda: _cassandra_answers(session), 60, "cassandra to answer again")
        env = {
            **os.environ,
            "WALSTREAM_STACK_MODE": "external",
            "WALSTREAM_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
            "WALSTREAM_NAMESPACE_DIR": str(ns.directory),
        }
        listed = subprocess.run(
            [sys.executable, "-m", "streams", "dlq", "list", ns.name, "--error-class", "exhausted"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
        )
        assert listed.returncode == 0, listed.stderr
        assert f"{len(entries)} dead letters" in listed.stderr
        replayed = subprocess.run(
            [sys.executable, "-m", "streams", "dlq", "replay", ns.name],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
        )
        assert replayed.returncode == 0, replayed.stderr
        assert f"replayed {len(entries)}" in replayed.stderr
        wait_until(
            lambda: cassandra_rows(session, ns.keyspace) == expected,
            120,
            "replay to bring cassandra level",
            worker.tail,
        )
        assert es_docs(es, ns.index) == expected
    finally:
        writer.close()
        worker.stop()
        ns.drop(session, es)


def _cassandra_answers(session: Session) -> bool:
    try:
        session.execute("SELECT release_version FROM system.local", timeout=2)
        return True
    except Exception:  # noqa: BLE001 - not yet
        return False


def test_poison_records_go_straight_to_the_dlq_and_do_not_block(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    schema = {
        "type": "record",
        "name": "Item",
        "fields": [{"name": "color", "type": "string"}, {"name": "qty", "type": "long"}],
    }
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=1, payload={"format": "avro", "schema": schema})
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    codec = Codec()
    raw = Producer({"bootstrap.servers": endpoints.kafka_bootstrap})
    log_topic = topics.wal_topic(ns.name)
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        warm = writer.prepare(ns.name, "warm-up", Op.UPSERT, {"color": "white", "qty": 0})
        _write(endpoints, ns, [warm])
        wait_until(lambda: "warm-up" in cassandra_rows(session, ns.keyspace), 90, "the worker to start", worker.tail)
        good_body = codec.encode_entry(new_entry(ns.name, "x", Op.DELETE, b""))
        poison = {
            "random bytes": os.urandom(64),
            "wrong framing": b"\x07\x01" + good_body[2:],
            "unknown fingerprint": b"\xc3\x01" + b"\xee" * 8 + good_body[10:],
            "payload off schema": codec.encode_entry(new_entry(ns.name, "bad", Op.UPSERT, b"\xff\xff\xff")),
            "unknown namespace": codec.encode_entry(new_entry("elsewhere", "y", Op.DELETE, b"")),
        }
        behind = [writer.prepare(ns.name, f"b{i}", Op.UPSERT, {"color": "green", "qty": i}) for i in range(20)]
        for body in poison.values():
            raw.produce(log_topic, key=b"poison", value=body)
            time.sleep(0.3)
        assert raw.flush(30) == 0
        _write(endpoints, ns, behind)

        letters = _dead_letters(endpoints, ns.name, len(poison), timeout=120)
        assert sorted(d.raw for d, _ in letters) == sorted(poison.values())
        # Straight from the log to the DLQ: no retry tier saw them, at most the one try the log gave them.
        for letter, _ in letters:
            assert letter.origin.topic == log_topic and letter.attempts <= 1, letter
        tiers = [topics.retry_topic(ns.name, tier) for tier in ns.namespace.retry.tiers]
        assert all(sum(KafkaAdmin(endpoints.kafka_bootstrap).end_offsets(t).values()) == 0 for t in tiers)
        produced_at = _produce_times(endpoints, log_topic, set(poison.values()))
        took = [dlq_ms - produced_at[letter.raw] for letter, dlq_ms in letters]
        print(f"poison records reached the DLQ {min(took)}-{max(took)} ms after they were written")
        reasons = {name: next(d for d, _ in letters if d.raw == body) for name, body in poison.items()}
        assert reasons["payload off schema"].error_class == "fatal"
        assert "unknown-namespace" in reasons["unknown namespace"].reason
        assert "unknown-fingerprint" in reasons["unknown fingerprint"].reason
        want = {e.key: ("green", i) for i, e in enumerate(behind)}
        wait_until(
            lambda: all(cassandra_rows(session, ns.keyspace).get(k) == v for k, v in want.items()),
            30,
            "the entries behind the poison",
            worker.tail,
        )
        assert worker.alive()
    finally:
        writer.close()
        worker.stop()
        ns.drop(session, es)


def _produce_times(endpoints: Endpoints, topic: str, values: set[bytes]) -> dict[bytes, int]:
    consumer = Consumer(
        {
            "bootstrap.servers": endpoints.kafka_bootstrap,
            "group.id": f"ts-{time.time_ns()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    found: dict[bytes, int] = {}
    deadline = time.monotonic() + 30
    try:
        while len(found) < len(values) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error() and msg.value() in values:
                found[msg.value()] = msg.timestamp()[1]
    finally:
        consumer.close()
    return found


def test_a_held_retry_partition_is_resumed_by_its_new_owner_after_a_rebalance(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", retry={"tiers": ["1s", "10s"], "max_attempts": 5})
    port = free_port()
    # The tiers only hold entries; the fan-out worker that owns the keys applies them once they are handed back.
    owner = WorkerProcess(ns, tmp_path / "data0", tmp_path / "fanout.log", role="fanout").start()
    first = WorkerProcess(ns, tmp_path / "data1", tmp_path / "first.log", metrics_port=port, role="retry").start()
    codec = Codec()
    raw = Producer({"bootstrap.servers": endpoints.kafka_bootstrap})
    due_ms = int(time.time() * 1000) + 12_000
    keys = [f"held-{i}" for i in range(30)]
    try:
        for key in keys:
            entry = new_entry(ns.name, key, Op.UPSERT, b'{"color": "gold", "qty": 1}')
            envelope = RetryEnvelope(
                entry, 1, due_ms, ("primary", "search"), "boom", "boom", Origin(topics.wal_topic(ns.name), 0, 0), "10s"
            )
            raw.produce(
                topics.retry_topic(ns.name, "10s"), key=key.encode(), value=codec.encode_retry_envelope(envelope)
            )
        assert raw.flush(30) == 0

        def all_held() -> bool:
            try:
                held = _counter(_metrics(port), "walstream_retry_held_partitions", namespace=ns.name, tier="10s")
            except OSError:
                return False
            return held == ns.namespace.partitions

        # The first owner has read the heads and paused every partition of the tier.
        wait_until(all_held, 60, "the first owner to hold the tier's partitions", first.tail)
        assert cassandra_rows(session, ns.keyspace) == {}
        first.stop()  # leaves the group: its partitions, paused there, move to the next owner
        second = WorkerProcess(ns, tmp_path / "data2", tmp_path / "second.log", role="retry").start()
        try:
            while time.time() * 1000 < due_ms - 300:  # held: nothing is applied before it is due
                assert cassandra_rows(session, ns.keyspace) == {}
                time.sleep(0.2)
            want = {k: ("gold", 1) for k in keys}
            wait_until(
                lambda: cassandra_rows(session, ns.keyspace) == want, 60, "the new owner to deliver", second.tail
            )
            assert es_docs(es, ns.index) == want
        finally:
            second.stop()
    finally:
        first.stop()
        owner.stop()
        ns.drop(session, es)


def test_a_flood_of_dead_letters_holds_the_namespace_instead_of_draining_it(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=1, retry={"dlq_max_per_minute": 5})
    port = free_port()
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log", metrics_port=port).start()
    raw = Producer({"bootstrap.servers": endpoints.kafka_bootstrap})
    try:
        for i in range(20):
            raw.produce(topics.wal_topic(ns.name), key=b"junk", value=b"garbage-%d" % i)
        assert raw.flush(30) == 0
        behind = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
        try:
            assert behind.write(ns.name, "behind", Op.UPSERT, {"color": "red", "qty": 1}).ok
        finally:
            behind.close()

        def held() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                    return False
            except urllib.error.HTTPError as err:
                return err.code == 503 and ns.name in err.read().decode()
            except OSError:
                return False

        wait_until(held, 60, "the flood guard to hold the namespace", worker.tail)
        assert _counter(_metrics(port), "walstream_namespace_paused", namespace=ns.name) == 1
        letters = _dead_letters(endpoints, ns.name, 20, timeout=5)
        assert 0 < len(letters) <= 5  # the log is not drained into the DLQ
        assert "behind" not in cassandra_rows(session, ns.keyspace)  # held, in order, not skipped
        assert worker.alive()
    finally:
        worker.stop()
        ns.drop(session, es)
