"""The pipeline's rate on each log backend, measured the same way: ``bench/pipeline.py --backend sqs``.

For Kafka and then SQS: a fresh namespace (Cassandra + Elasticsearch targets) of that backend, a ``walstream
worker`` subprocess, N unique-key upserts written through the SDK in bulk while the worker runs. The clock runs from
the first write until the N-th change event is on ``wal.<ns>.cdc`` (published once every target holds the entry);
then the Cassandra row count and the Elasticsearch document count must both be N. The write rate is printed too:
an SQS namespace's writes are one HTTP call per ten entries. Everything made is removed; the worker is stopped by
its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer

from connectors.cassandra.sink import new_cluster
from connectors.elasticsearch.client import new_client
from connectors.elasticsearch.generations import drop_target_index
from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.kafka.config import client_config
from connectors.sqs.client import sync_client
from streams import topics
from streams.client.sdk import WalWriter
from streams.model import Op, WalEntry
from streams.namespaces import Namespace, load_namespace
from streams.worker.targets import apply_namespaces

ROOT = Path(__file__).resolve().parent.parent


def _namespace(folder: Path, name: str, backend: str, partitions: int) -> Namespace:
    doc = {
        "name": name,
        "backend": backend,
        "partitions": partitions,
        "targets": {
            "primary": {
                "type": "cassandra",
                "keyspace": name,
                "table": "orders",
                "key_column": "id",
                "columns": {"status": {"type": "text"}, "amount": {"type": "double"}},
            },
            "search": {"type": "elasticsearch", "index": name, "fields": {"status": "keyword", "amount": "double"}},
        },
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return load_namespace(folder / f"{name}.yaml")


def measure(endpoints: Endpoints, backend: str, n: int, partitions: int, timeout: float) -> dict[str, Any]:
    name = f"bench{backend}_{uuid.uuid4().hex[:8]}"
    folder = Path(tempfile.mkdtemp(prefix="walstream-backends-"))
    (folder / "ns").mkdir()
    ns = _namespace(folder / "ns", name, backend, partitions)
    asyncio.run(apply_namespaces([ns], endpoints))
    env = {
        **os.environ,
        "WALSTREAM_NAMESPACE_DIR": str(folder / "ns"),
        "WALSTREAM_DATA_DIR": str(folder / "data"),
        "PYTHONPATH": str(ROOT),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams", "worker", "--namespaces", name, "--log-format", "text"],
        cwd=ROOT,
        env=env,
        stdout=(folder / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    consumer = Consumer(
        {
            **client_config(endpoints.kafka),
            "group.id": f"{name}-count",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topics.cdc_topic(name)])
    entries: list[WalEntry] = []
    figures: dict[str, Any] = {"backend": backend, "entries": n}
    try:
        writer = WalWriter(endpoints.kafka, {name: ns}, sqs=endpoints.sqs)
        warm = writer.prepare(name, "warm-up", Op.UPSERT, {"status": "new", "amount": 0.0})
        entries = [writer.prepare(name, f"o{i}", Op.UPSERT, {"status": "paid", "amount": float(i)}) for i in range(n)]

        async def write(batch: list[WalEntry]) -> list[Any]:
            return await writer.write_many(batch)

        assert all(d.ok for d in asyncio.run(write([warm])))
        seen = 0
        started = time.monotonic()
        while seen < 1 and time.monotonic() - started < 120:  # measure the pipeline, not the worker's start
            msg = consumer.poll(0.5)
            seen += 1 if msg is not None and not msg.error() else 0
        if seen < 1:
            raise RuntimeError(f"the {backend} worker did not start; see {folder / 'worker.log'}")
        wrote: dict[str, float] = {}

        def write_all() -> None:
            began = time.monotonic()
            chunk = 500
            for start in range(0, n, chunk):
                answers = asyncio.run(write(entries[start : start + chunk]))
                if not all(d.ok for d in answers):
                    raise RuntimeError(f"a write was not durable: {next(d for d in answers if not d.ok)}")
            wrote["seconds"] = time.monotonic() - began

        began = time.monotonic()
        writing = threading.Thread(target=write_all, daemon=True)
        writing.start()
        events = 0
        deadline = began + timeout
        while events < n and time.monotonic() < deadline:
            batch = consumer.consume(500, 0.5)
            events += sum(1 for m in batch if not m.error() and m.key() != b"warm-up")
        elapsed = time.monotonic() - began
        writing.join(timeout=60)
        writer.close()
        cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port, security=endpoints.security.cassandra)
        session = cluster.connect()
        rows = session.execute(f"SELECT COUNT(*) FROM {name}.orders", timeout=60).one()[0] - 1
        cluster.shutdown()
        es = new_client(endpoints.elasticsearch_url, endpoints.security.elasticsearch, request_timeout=60)
        es.indices.refresh(index=name)
        docs = int(es.count(index=name)["count"]) - 1
        figures.update(
            events=events,
            seconds=round(elapsed, 2),
            rate=round(events / elapsed, 1),
            write_rate=round(n / wrote["seconds"], 1) if "seconds" in wrote else None,
            cassandra_rows=rows,
            es_docs=docs,
            exact=events >= n and rows == n and docs == n,
        )
        return figures
    finally:
        consumer.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(30)
        _cleanup(endpoints, ns)
        shutil.rmtree(folder, ignore_errors=True)


def _cleanup(endpoints: Endpoints, ns: Namespace) -> None:
    admin = KafkaAdmin(endpoints.kafka)
    internal = [t for t in admin._admin.list_topics(timeout=10).topics if t.startswith(f"walstream.{ns.name}")]
    admin.delete_topics([*ns.topics(), *internal])
    cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port, security=endpoints.security.cassandra)
    with contextlib.suppress(Exception):
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {ns.name}", timeout=60)
    cluster.shutdown()
    es = new_client(endpoints.elasticsearch_url, endpoints.security.elasticsearch, request_timeout=60)
    with contextlib.suppress(Exception):
        drop_target_index(es, ns.name)
    if ns.backend == "sqs" and endpoints.sqs is not None:
        client = sync_client(endpoints.sqs)
        for queue in (topics.sqs_queue(ns.name), topics.sqs_dlq_queue(ns.name)):
            with contextlib.suppress(Exception):
                client.delete_queue(QueueUrl=client.get_queue_url(QueueName=queue)["QueueUrl"])


def compare(endpoints: Endpoints, args: argparse.Namespace) -> int:
    """Kafka, then SQS, the same way; a table and one BENCH_JSON line. 0 when both reconciled exactly."""
    if endpoints.sqs is None:
        print("bench: error: no SQS endpoint (an open local stack runs ElasticMQ; or set WALSTREAM_SQS_ENDPOINT)")
        return 2
    results = [measure(endpoints, b, args.entries, args.partitions, args.timeout) for b in ("kafka", "sqs")]
    print(f"\n{'backend':<8} {'entries':>8} {'seconds':>8} {'pipeline/s':>11} {'writes/s':>9}  exact")
    for f in results:
        print(
            f"{f['backend']:<8} {f['entries']:>8} {f['seconds']:>8} {f['rate']:>11,.1f} "
            f"{f['write_rate'] or 0:>9,.1f}  {f['exact']}"
        )
    print("BENCH_JSON " + json.dumps({"bench": "pipeline-backends", "results": results}, sort_keys=True), flush=True)
    return 0 if all(f["exact"] for f in results) else 1
