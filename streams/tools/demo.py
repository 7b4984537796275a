"""The main job of `make run`: write a stream of orders once, watch both stores converge, show the result."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch.helpers import scan

from connectors.cassandra.sink import new_cluster
from connectors.elasticsearch.client import new_client
from connectors.elasticsearch.generations import drop_target_index
from connectors.endpoints import Endpoints
from streams.client.sdk import SyncWalWriter
from streams.model import Op, WalEntry
from streams.namespaces import CassandraTarget, ElasticsearchTarget, Namespace
from streams.ports import Delivery
from streams.progress import Progress
from streams.tools.cdc import read_cdc
from streams.worker.targets import Connections, apply_namespaces, build_sinks

Say = Callable[[str], None]

STATUSES = ("new", "paid", "shipped", "delivered", "returned")


def make_history(writer: SyncWalWriter, namespace: str, count: int, keys: int, seed: int) -> list[WalEntry]:
    """Inserts, updates and deletes over a key space smaller than the stream."""
    rnd = random.Random(seed)
    entries = []
    for _ in range(count):
        key = f"order-{rnd.randrange(keys):05d}"
        if rnd.random() < 0.15:
            entries.append(writer.prepare(namespace, key, Op.DELETE))
        else:
            doc = {
                "customer": f"customer-{rnd.randrange(200):03d}",
                "status": rnd.choice(STATUSES),
                "amount": round(rnd.uniform(5, 500), 2),
            }
            entries.append(writer.prepare(namespace, key, Op.UPSERT, doc))
    return entries


def expected_state(entries: list[WalEntry]) -> dict[str, dict[str, Any]]:
    newest: dict[str, WalEntry] = {}
    for e in entries:
        if e.key not in newest or e.sequence > newest[e.key].sequence:
            newest[e.key] = e
    return {k: json.loads(e.payload) for k, e in newest.items() if e.op is Op.UPSERT}


def run_demo(
    endpoints: Endpoints,
    namespace: Namespace,
    namespace_dir: Path,
    data_dir: Path,
    say: Say,
    count: int = 20000,
    keys: int = 4000,
) -> bool:
    ((_cass_name, cass),) = namespace.targets_of_type("cassandra").items()
    ((_es_name, es_target),) = namespace.targets_of_type("elasticsearch").items()
    say(f"applying namespace {namespace.name} (topics, table {cass.keyspace}.{cass.table}, index {es_target.index})")
    asyncio.run(apply_namespaces([namespace], endpoints, progress=say))
    cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port, security=endpoints.security.cassandra)
    session = cluster.connect()
    es = new_client(endpoints.elasticsearch_url, endpoints.security.elasticsearch, request_timeout=60)
    say("clearing the demo table and index so this run's counts stand on their own")
    _reset(session, es, cass, es_target, endpoints, namespace)

    worker = _start_worker(namespace, namespace_dir, data_dir, say)
    writer = SyncWalWriter(endpoints.kafka, {namespace.name: namespace}, sqs=endpoints.sqs)
    try:
        entries = make_history(writer, namespace.name, count, keys, seed=int(time.time()))
        expected = expected_state(entries)
        progress = Progress(len(entries), "writing to the log")
        started = time.monotonic()
        pending: list[Future[Delivery]] = []
        failures = 0
        for entry in entries:
            pending.append(writer.submit_entry(entry))
            if len(pending) >= 2000:
                failures += _settle(pending, progress)
        failures += _settle(pending, progress)
        progress.close()
        wrote = time.monotonic() - started
        say(f"{len(entries) - failures} entries durable in {wrote:.1f}s ({len(entries) / wrote:,.0f}/s)")
        if failures:
            say(f"{failures} writes were not durable")
            return False

        ok = _wait_for(session, es, cass, es_target, expected, worker, say)
        took = time.monotonic() - started
        rows = _cassandra_state(session, cass)
        docs = _es_state(es, es_target.index)
        print(f"\nwrote {len(entries)} entries over {keys} keys; expected {len(expected)} live orders")
        print(
            f"cassandra {cass.keyspace}.{cass.table}: {len(rows)} rows, {_matching(rows, expected)} at newest version"
        )
        print(f"elasticsearch {es_target.index}: {len(docs)} documents, {_matching(docs, expected)} at newest version")
        print(f"end to end: {took:.1f}s ({len(entries) / took:,.0f} entries/s through both stores)")
        _sample_search(es, es_target.index)
        print("\nthis run's first change events on the CDC topic:")
        ours = {e.entry_id for e in entries}
        shown = 0
        for event in read_cdc(endpoints, namespace.name, 0, idle_timeout=10, from_beginning=True):
            if event.get("source", {}).get("entry_id") in ours:
                print("  " + json.dumps(event))
                shown += 1
                if shown == 5:
                    break
        return ok
    finally:
        writer.close()
        _stop_worker(worker, say)
        cluster.shutdown()
        es.close()


def _settle(pending: list[Future[Delivery]], progress: Progress) -> int:
    failures = 0
    for future in pending:
        if not future.result().ok:
            failures += 1
        progress.advance()
    pending.clear()
    return failures


def _reset(
    session: Any,
    es: Elasticsearch,
    cass: CassandraTarget,
    es_target: ElasticsearchTarget,
    endpoints: Endpoints,
    namespace: Namespace,
) -> None:
    session.execute(f"TRUNCATE {cass.keyspace}.{cass.table}", timeout=60)
    drop_target_index(es, es_target.index)

    async def recreate() -> None:
        connections = Connections(endpoints)
        try:
            for sink in build_sinks(namespace, connections).values():
                await sink.ensure_schema()
        finally:
            await connections.close()

    asyncio.run(recreate())


def _start_worker(namespace: Namespace, namespace_dir: Path, data_dir: Path, say: Say) -> subprocess.Popen[bytes]:
    log = data_dir / f"worker-{namespace.name}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WALSTREAM_NAMESPACE_DIR": str(namespace_dir), "WALSTREAM_DATA_DIR": str(data_dir)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", "--namespaces", namespace.name],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    say(f"started worker (pid {proc.pid}, log {log})")
    return proc


def _stop_worker(proc: subprocess.Popen[bytes], say: Say) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    say(f"worker stopped (exit code {proc.returncode})")


def _cassandra_state(session: Any, cass: CassandraTarget) -> dict[str, dict[str, Any]]:
    cols = list(cass.columns)
    rows = session.execute(f"SELECT {cass.key_column}, {', '.join(cols)} FROM {cass.keyspace}.{cass.table}", timeout=60)
    return {getattr(r, cass.key_column): {c: getattr(r, c) for c in cols} for r in rows}


def _es_state(es: Elasticsearch, index: str) -> dict[str, dict[str, Any]]:
    es.indices.refresh(index=index)
    return {hit["_id"]: hit["_source"] for hit in scan(es, index=index, query={"query": {"match_all": {}}}, size=5000)}


def _matching(found: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> int:
    return sum(1 for k, v in expected.items() if k in found and all(found[k].get(f) == x for f, x in v.items()))


def _wait_for(
    session: Any,
    es: Elasticsearch,
    cass: CassandraTarget,
    es_target: ElasticsearchTarget,
    expected: dict[str, dict[str, Any]],
    worker: subprocess.Popen[bytes],
    say: Say,
    timeout: float = 600,
) -> bool:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            say(f"the worker exited with code {worker.returncode}; see its log")
            return False
        rows, docs = _cassandra_state(session, cass), _es_state(es, es_target.index)
        good_rows, good_docs = _matching(rows, expected), _matching(docs, expected)
        if good_rows == len(expected) == len(rows) and good_docs == len(expected) == len(docs):
            return True
        note = (
            f"waiting for the worker: cassandra {good_rows}/{len(expected)}, elasticsearch {good_docs}/{len(expected)}"
        )
        if note != last:
            say(note)
            last = note
        time.sleep(2)
    say("the stores did not converge in time")
    return False


def _sample_search(es: Elasticsearch, index: str) -> None:
    by_status = es.search(index=index, size=0, aggs={"status": {"terms": {"field": "status"}}})
    counts = ", ".join(f"{b['key']} {b['doc_count']}" for b in by_status["aggregations"]["status"]["buckets"])
    print(f"\nsearch: orders by status: {counts}")
    top = es.search(index=index, query={"term": {"customer": "customer-007"}}, sort=[{"amount": "desc"}], size=3)
    print(f"search: customer-007 has {top['hits']['total']['value']} orders; the largest:")
    for hit in top["hits"]["hits"]:
        print(f"  {hit['_id']}: {json.dumps(hit['_source'], sort_keys=True)}")
