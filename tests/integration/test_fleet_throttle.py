"""Throttled deletes hold the namespace's rate across every worker of its group, not per process.

Each store is measured in its own terms, five times a second: Cassandra's row count, and the delete operations
Elasticsearch's index statistics count (live, not waiting for a refresh). Each reading is stamped with the middle
of the query that took it."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer, TopicPartition
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.model import Op
from tests.integration.pipeline import (
    ScratchNamespace,
    WorkerProcess,
    cassandra_rows,
    create_namespace,
    es_docs,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.integration

#: (monotonic time at the middle of the query, deletes so far, half the query's duration). The reading is true
#: at some instant within the query, so a window's length is known only to within the two half-durations.
Sample = tuple[float, float, float]


def _metric(port: int, name: str, **labels: str) -> float | None:
    """A metric's value on a worker, None when the worker does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rpartition(" ")[2])
    return 0.0


def _rate_limit(port: int, ns: ScratchNamespace) -> float | None:
    return _metric(port, "walstream_delete_rate_limit", namespace=ns.name, target="primary")


def _where(endpoints: Endpoints, ns: ScratchNamespace, worker: WorkerProcess) -> str:
    """What a stuck run looks like: the group's committed offsets against the log's ends, and the other topics."""
    admin = KafkaAdmin(endpoints.kafka_bootstrap)
    log_topic = topics.wal_topic(ns.name)
    ends = admin.end_offsets(log_topic)
    consumer = Consumer({"bootstrap.servers": endpoints.kafka_bootstrap, "group.id": f"walstream.{ns.name}"})
    try:
        committed = consumer.committed([TopicPartition(log_topic, p) for p in ends], timeout=10)
    finally:
        consumer.close()
    others = {t: sum(admin.end_offsets(t).values()) for t in ns.namespace.topics() if t != log_topic}
    return (
        f"log ends {ends}, committed {{{', '.join(f'{tp.partition}: {tp.offset}' for tp in committed)}}}, "
        f"other topics {others}\n{worker.tail(80)}"
    )


def _rows(session: Session, ns: ScratchNamespace) -> int:
    return int(session.execute(f"SELECT count(*) FROM {ns.keyspace}.items", timeout=30).one()[0])


def _windows(samples: Sequence[Sample], after: float = 0.0) -> list[tuple[float, float]]:
    """(start, deletes per second) over every window from a sample to the first sample at least a second later,
    counting only the windows that start at ``after`` or later. The rate is the one the readings prove: over the
    longest time the window can have lasted (a slow query on a busy machine widens it, it does not inflate it)."""
    rates = []
    for i, (t0, n0, h0) in enumerate(samples):
        if t0 < after:
            continue
        later = next(((t, n, h) for t, n, h in samples[i + 1 :] if t - t0 >= 1.0), None)
        if later is not None:
            t1, n1, h1 = later
            rates.append((t0, (n1 - n0) / (t1 - t0 + h0 + h1)))
    return rates


def _populate(
    endpoints: Endpoints, ns: ScratchNamespace, session: Session, count: int, worker: WorkerProcess
) -> list[str]:
    keys = [f"d{i}" for i in range(count)]
    _write(endpoints, ns, [(k, Op.UPSERT) for k in keys])
    wait_until(lambda: _rows(session, ns) == count, 180, "the rows to delete", worker.tail)
    return keys


def _write(endpoints: Endpoints, ns: ScratchNamespace, what: list[tuple[str, Op]]) -> None:
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        futures = [
            writer.submit_entry(writer.prepare(ns.name, k, op, {"color": "x", "qty": 1} if op is Op.UPSERT else None))
            for k, op in what
        ]
        assert all(f.result(60).ok for f in futures)
    finally:
        writer.close()


def _timed(read: Callable[[], float]) -> Sample:
    began = time.monotonic()
    value = read()
    ended = time.monotonic()
    return ((began + ended) / 2, value, (ended - began) / 2)


def _index_deletes(es: Elasticsearch, ns: ScratchNamespace) -> float:
    stats = es.indices.stats(index=ns.index, metric="indexing")
    return float(stats["_all"]["primaries"]["indexing"]["delete_total"])


def _watch(
    stores: tuple[Session, Elasticsearch],
    ns: ScratchNamespace,
    total: int,
    ports: Sequence[int],
    until: Callable[[], bool],
    cassandra: list[Sample],
    search: list[Sample],
    seen: dict[int, float],
) -> None:
    """Sample the deletes both stores took, five times a second, until ``until()``; ``seen`` keeps each worker's
    own count of search deletes (a worker that left keeps its last one)."""
    session, es = stores
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not until():
        cassandra.append(_timed(lambda: total - _rows(session, ns)))
        search.append(_timed(lambda: _index_deletes(es, ns)))
        for port in ports:
            value = _metric(port, "walstream_deletes_total", namespace=ns.name, target="search")
            if value is not None:
                seen[port] = value
        time.sleep(0.2)


def test_two_workers_hold_the_namespace_rate_together(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    rate = 500
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=6, throttle={"max_deletes_per_second": rate})
    ports = [free_port(), free_port()]
    a = WorkerProcess(ns, tmp_path / "data-a", tmp_path / "a.log", metrics_port=ports[0]).start()
    b = WorkerProcess(ns, tmp_path / "data-b", tmp_path / "b.log", metrics_port=ports[1]).start()
    try:
        keys = _populate(endpoints, ns, session, 5000, a)
        # Both own three of the six partitions, so each paces at half the rate.
        wait_until(lambda: [_rate_limit(p, ns) for p in ports] == [rate / 2] * 2, 120, "both shares", b.tail)
        cassandra: list[Sample] = []
        search: list[Sample] = []
        started = time.monotonic()
        _write(endpoints, ns, [(k, Op.DELETE) for k in keys])
        _watch(
            stores,
            ns,
            len(keys),
            ports,
            lambda: bool(cassandra) and cassandra[-1][1] == len(keys),
            cassandra,
            search,
            {},
        )
        took = cassandra[-1][0] - started
        assert cassandra[-1][1] == len(keys), _where(endpoints, ns, a)
        fastest = {store: max(r for _, r in _windows(s)) for store, s in (("cassandra", cassandra), ("search", search))}
        print(
            f"fleet-throttled deletes: {len(keys)} in {took:.1f}s by two workers, fastest second {fastest} "
            f"(limit {rate}/s)"
        )
        assert took >= len(keys) / rate, f"{len(keys)} deletes at {rate}/s took only {took:.1f}s"
        for store, fast in fastest.items():
            assert fast <= rate * 1.10, f"{store} took {fast:.0f} deletes in a second (limit {rate}/s)"
        wait_until(lambda: not es_docs(es, ns.index), 60, "the index to be empty")
        assert not cassandra_rows(session, ns.keyspace)
    finally:
        a.stop()
        b.stop()
        ns.drop(session, es)


def test_a_worker_joining_keeps_the_bound_and_one_leaving_hands_over_its_share(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    rate = 200
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=6, throttle={"max_deletes_per_second": rate})
    ports = [free_port(), free_port()]
    a = WorkerProcess(ns, tmp_path / "data-a", tmp_path / "a.log", metrics_port=ports[0]).start()
    b = WorkerProcess(ns, tmp_path / "data-b", tmp_path / "b.log", metrics_port=ports[1])
    try:
        keys = _populate(endpoints, ns, session, 6000, a)
        wait_until(lambda: _rate_limit(ports[0], ns) == rate, 60, "the first worker's share", a.tail)
        cassandra: list[Sample] = []
        search: list[Sample] = []
        seen: dict[int, float] = {}
        _write(endpoints, ns, [(k, Op.DELETE) for k in keys])
        # Alone, then joined: the first worker's deletes have begun before the second one starts.
        _watch(
            stores, ns, len(keys), ports, lambda: bool(cassandra) and cassandra[-1][1] >= 400, cassandra, search, seen
        )
        b.start()
        _watch(
            stores,
            ns,
            len(keys),
            ports,
            lambda: [_rate_limit(p, ns) for p in ports] == [rate / 2] * 2 and seen.get(ports[1], 0) >= 200,
            cassandra,
            search,
            seen,
        )
        assert seen.get(ports[1], 0) >= 200, f"the second worker never took its share\n{b.tail(80)}"
        joined_until = len(cassandra)
        # The second worker leaves (a graceful stop): the first one takes the whole rate again.
        b.stop()
        _watch(stores, ns, len(keys), ports, lambda: _rate_limit(ports[0], ns) == rate, cassandra, search, seen)
        handed_over = time.monotonic()
        _watch(stores, ns, len(keys), ports, lambda: cassandra[-1][1] == len(keys), cassandra, search, seen)
        assert cassandra[-1][1] == len(keys), _where(endpoints, ns, a)
        fastest = {store: max(r for _, r in _windows(s)) for store, s in (("cassandra", cassandra), ("search", search))}
        alone_again = max(r for _, r in _windows(cassandra, after=handed_over))
        print(
            f"deletes with a join and a leave: fastest second {fastest}, after the leave {alone_again:.0f}/s "
            f"(limit {rate}/s, {joined_until} samples until the second worker left)"
        )
        for store, fast in fastest.items():
            assert fast <= rate * 1.10, f"{store} took {fast:.0f} deletes in a second (limit {rate}/s)"
        # Alone again, it goes faster than its half share could (100/s): the whole rate is its own.
        assert alone_again >= rate * 0.75, f"alone again, the worker deleted only {alone_again:.0f}/s"
        wait_until(lambda: not es_docs(es, ns.index), 60, "the index to be empty")
        assert not cassandra_rows(session, ns.keyspace)
    finally:
        a.stop()
        b.stop()
        ns.drop(session, es)
