"""`walstream verify` on a large namespace: keys per second and the verify process's peak memory.

Run with the local stack up:  .venv/bin/python bench/verify.py [--keys 200000] [--drift 1000]
Rows and documents are inserted directly with the stores' bulk APIs (same keys, same versions), then ``--drift``
documents are deleted from the index so the run also finds and reports drift. The namespace's keyspace, index
and topics are dropped at the end. Peak RSS is the verify process's (a child process, measured by the OS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from cassandra.concurrent import execute_concurrent_with_args
from elasticsearch.helpers import streaming_bulk

from connectors.cassandra.sink import new_cluster
from connectors.elasticsearch.client import new_client
from connectors.elasticsearch.generations import drop_target_index
from connectors.kafka.admin import KafkaAdmin
from connectors.local.stack import LocalStack
from streams.config import load_settings
from streams.namespaces import load_namespace
from streams.worker.targets import apply_namespaces

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--drift", type=int, default=1000, help="documents to delete from the index")
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args()

    settings = load_settings()
    stack = LocalStack(settings.local)
    if len(stack.pids()) < 3:
        print("the local stack is not running: `walstream stack up` first", file=sys.stderr)
        return 2
    endpoints = stack.endpoints()
    name = f"verifybench_{uuid.uuid4().hex[:8]}"
    index = name.replace("_", "-")
    workdir = Path(tempfile.mkdtemp(prefix="walstream-verify-"))
    (workdir / "ns").mkdir()
    path = workdir / "ns" / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "targets": {
                    "primary": {
                        "type": "cassandra",
                        "keyspace": name,
                        "table": "items",
                        "key_column": "id",
                        "columns": {"color": {"type": "text"}, "qty": {"type": "bigint"}},
                    },
                    "search": {"type": "elasticsearch", "index": index, "fields": {"color": "keyword", "qty": "long"}},
                },
            }
        )
    )
    ns = load_namespace(path)
    asyncio.run(apply_namespaces([ns], endpoints))
    cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port, timeout=60)
    session = cluster.connect()
    es = new_client(endpoints.elasticsearch_url, request_timeout=120)
    try:
        base = int(time.time() * 1_000_000) - 3_600_000_000
        started = time.monotonic()
        insert = session.prepare(f"INSERT INTO {name}.items (id, color, qty) VALUES (?, ?, ?) USING TIMESTAMP ?")
        rows = ((f"key-{i:07d}", "red" if i % 2 else "blue", i, base + i) for i in range(args.keys))
        for ok, outcome in execute_concurrent_with_args(
            session, insert, rows, concurrency=100, results_generator=True, raise_on_first_error=True
        ):
            assert ok, outcome
        es.indices.put_settings(index=index, settings={"refresh_interval": "-1"})
        actions = (
            {
                "_index": index,
                "_id": f"key-{i:07d}",
                "_version": base + i,
                "_version_type": "external",
                "color": "red" if i % 2 else "blue",
                "qty": i,
            }
            for i in range(args.drift, args.keys)  # the first --drift keys are missing from the index
        )
        for ok, item in streaming_bulk(es, actions, chunk_size=5000, raise_on_error=False):
            if not ok:
                raise RuntimeError(f"bulk failed: {item}")
        es.indices.put_settings(index=index, settings={"refresh_interval": "1s"})
        es.indices.refresh(index=index)
        print(
            f"inserted {args.keys:,} rows and {args.keys - args.drift:,} documents "
            f"in {time.monotonic() - started:.0f} s"
        )

        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
            "WALSTREAM_NAMESPACE_DIR": str(workdir / "ns"),
            "WALSTREAM_DATA_DIR": str(workdir / "data"),
            "WALSTREAM_STACK_MODE": "external",
            "WALSTREAM_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
            "WALSTREAM_CASSANDRA_CONTACT": f"{endpoints.cassandra_host}:{endpoints.cassandra_port}",
            "WALSTREAM_ELASTICSEARCH_URL": endpoints.elasticsearch_url,
        }
        command = [sys.executable, "-m", "streams", "verify", name, "--json", "--grace-s", "0"]
        command += ["--page-size", str(args.page_size)]
        started = time.monotonic()
        run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
        seconds = time.monotonic() - started
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if run.returncode not in (0, 1):
            print(run.stdout, run.stderr, file=sys.stderr)
            return 1
        report = json.loads(run.stdout)
        scanned = sum(report["scanned"].values())
        missing = report["drift"]["search"]["missing"]["count"]
        print(
            f"verify: {args.keys:,} keys, {scanned:,} scanned (both stores) in {seconds:.1f} s "
            f"(process included; {report['seconds']:.1f} s scanning): {scanned / report['seconds']:,.0f} keys/s, "
            f"{args.keys / seconds:,.0f} namespace keys/s; peak RSS {peak_mib:.0f} MiB; "
            f"found {missing:,} missing of {args.drift:,} (exit {run.returncode})"
        )
        return 0 if missing == args.drift else 1
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)
        drop_target_index(es, index)
        KafkaAdmin(endpoints.kafka).delete_topics(ns.topics())
        cluster.shutdown()
        es.close()


if __name__ == "__main__":
    sys.exit(main())
