"""Cross-region replication lag: seconds from an entry's write in one region to its change event in the other.

    .venv/bin/python bench/replication.py [--rate 1000] [--seconds 60]

It needs a running two-region stack (`walstream stack up --regions 2`) and never starts or stops it. It makes a
fresh replicated namespace `bench_<random>` (regions east and west, 6 partitions, Cassandra + Elasticsearch
targets) in both regions, runs one `walstream worker` per region, and writes upserts of distinct keys in east at a
steady ``--rate`` for ``--seconds`` through the SDK. For every entry it records when its write was answered and
when its change event arrived: on east's `wal.<ns>.cdc` (the same-region pipeline, the baseline) and on west's
(MirrorMaker 2 to west's Kafka, then west's worker and stores). It prints p50/p99/max of both, the rate
achieved, and one `BENCH_JSON {...}` line; then it removes everything it made (topics in both regions,
keyspaces, indices, the workers' Faust topics) and stops the workers by their pids.

Exit status: 0 every entry arrived in both regions, 2 error (the message says which).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elasticsearch import Elasticsearch  # noqa: E402

from connectors.cassandra.sink import new_cluster  # noqa: E402
from connectors.elasticsearch.generations import drop_target_index  # noqa: E402
from connectors.kafka.admin import KafkaAdmin  # noqa: E402
from connectors.kafka.config import consumer_config  # noqa: E402
from connectors.local.stack import LocalStack  # noqa: E402
from streams.client.sdk import WalWriter  # noqa: E402
from streams.codec import Codec  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.namespaces import Namespace, load_namespace  # noqa: E402
from streams.ports import Durable  # noqa: E402
from streams.worker.targets import apply_namespaces  # noqa: E402

REGIONS = ("east", "west")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def document(name: str, partitions: int) -> dict[str, Any]:
    return {
        "name": name,
        "partitions": partitions,
        "targets": {
            "db": {
                "type": "cassandra",
                "keyspace": name,
                "table": "items",
                "key_column": "id",
                "columns": {"status": {"type": "text"}, "amount": {"type": "bigint"}},
            },
            "search": {"type": "elasticsearch", "index": name.replace("_", "-"), "fields": {"status": "keyword"}},
        },
        "replication": {"regions": list(REGIONS)},
    }


class CdcReader(threading.Thread):
    """Reads a change topic from its start and notes when each entry's event arrived."""

    def __init__(self, kafka: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.arrived: dict[str, float] = {}
        self._consumer = Consumer(consumer_config(kafka, f"walstream-bench-{uuid.uuid4().hex[:8]}"))
        self._consumer.subscribe([topic])
        self._done = threading.Event()
        self._codec = Codec()

    def run(self) -> None:
        while not self._done.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            now = time.time()
            event = self._codec.decode_change_event(msg.value() or b"")
            self.arrived.setdefault(event.source.entry_id, now)
        self._consumer.close()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def start_worker(ns: Namespace, folder: Path, region: str, stack: LocalStack) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")}
    env.update(stack.client_env(region))
    env.update(WALSTREAM_NAMESPACE_DIR=str(folder / "namespaces"), WALSTREAM_DATA_DIR=str(folder / f"data-{region}"))
    log = (folder / f"worker-{region}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "streams", "worker", "--namespaces", ns.name],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


async def write_steady(kafka: str, ns: Namespace, rate: int, seconds: float, prefix: str = "key") -> dict[str, float]:
    """Upserts of distinct keys at ``rate`` a second in ticks of 0.1 s; entry id -> when its write was answered."""
    writer = WalWriter(kafka, {ns.name: ns})
    written: dict[str, float] = {}
    per_tick = max(rate // 10, 1)
    began = time.monotonic()
    tick = 0
    pending = []

    async def one_tick(entries: list[Any]) -> None:
        answers = await writer.write_many(entries)
        now = time.time()
        for entry, answer in zip(entries, answers, strict=True):
            if answer.durable is not Durable.TRUE:
                raise RuntimeError(f"a write was not durable: {answer}")
            written[entry.entry_id] = now

    try:
        while time.monotonic() - began < seconds:
            base = tick * per_tick
            entries = [
                writer.prepare(ns.name, f"{prefix}-{base + i}", "UPSERT", {"status": "new", "amount": base + i})
                for i in range(per_tick)
            ]
            pending.append(asyncio.create_task(one_tick(entries)))
            tick += 1
            await asyncio.sleep(max(began + tick * 0.1 - time.monotonic(), 0))
        await asyncio.gather(*pending)
    finally:
        writer.close()
    return written


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100)
    return {"p50": round(cut[49], 3), "p99": round(cut[98], 3), "max": round(ordered[-1], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000, help="entries a second written in east (default 1000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to write (default 60)")
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    settings = load_settings()
    stack = LocalStack(settings.local)
    if not {"kafka", "kafka-west", "mirrormaker", "cassandra", "elasticsearch"} <= set(stack.pids()):
        say("needs a running two-region stack: walstream stack up --regions 2")
        return 2
    regions = stack.region_endpoints()
    stores = stack.endpoints()
    folder = Path(tempfile.mkdtemp(prefix="walstream-bench-repl-"))
    name = f"bench_{uuid.uuid4().hex[:8]}"
    (folder / "namespaces").mkdir()
    path = folder / "namespaces" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document(name, args.partitions)))
    ns = load_namespace(path)
    copies = {r: ns.in_region(r, regions[r]["store_suffix"]) for r in REGIONS}
    endpoints = {r: replace(stores, kafka_bootstrap=regions[r]["kafka_bootstrap"]) for r in REGIONS}
    workers: list[subprocess.Popen[bytes]] = []
    readers: list[CdcReader] = []
    try:
        for region in REGIONS:
            asyncio.run(apply_namespaces([copies[region]], endpoints[region]))
        workers = [start_worker(ns, folder, region, stack) for region in REGIONS]
        readers = [CdcReader(regions[r]["kafka_bootstrap"], f"wal.{name}.cdc") for r in REGIONS]
        for reader in readers:
            reader.start()
        say("warming up: 200 entries until both regions announce them")
        warm = asyncio.run(write_steady(regions["east"]["kafka_bootstrap"], ns, 200, 1.0, "warm"))
        deadline = time.monotonic() + 180
        while not all(set(warm) <= set(r.arrived) for r in readers):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                say("warm-up entries did not reach both regions; see " + str(folder))
                return 2
            time.sleep(0.5)
        say(f"writing {args.rate}/s in east for {args.seconds:.0f}s")
        began = time.monotonic()
        written = asyncio.run(write_steady(regions["east"]["kafka_bootstrap"], ns, args.rate, args.seconds))
        write_s = time.monotonic() - began
        for key in warm:
            written.pop(key, None)
        deadline = time.monotonic() + 300
        while not all(set(written) <= set(r.arrived) for r in readers):
            if time.monotonic() > deadline:
                missing = [len(set(written) - set(r.arrived)) for r in readers]
                say(f"entries missing after 300 s (east, west): {missing}")
                return 2
            time.sleep(0.5)
        local = [readers[0].arrived[e] - t for e, t in written.items()]
        remote = [readers[1].arrived[e] - t for e, t in written.items()]
        figures: dict[str, Any] = {
            "entries": len(written),
            "rate_achieved": round(len(written) / write_s, 1),
            "same_region_s": quantiles(local),
            "east_to_west_s": quantiles(remote),
        }
        print(f"entries {figures['entries']} at {figures['rate_achieved']}/s for {write_s:.0f}s")
        print(f"{'':<34} {'p50':>8} {'p99':>8} {'max':>8}")
        for label, key in (
            ("write east -> change event east", "same_region_s"),
            ("write east -> change event west", "east_to_west_s"),
        ):
            q = figures[key]
            print(f"{label:<34} {q['p50']:>7.3f}s {q['p99']:>7.3f}s {q['max']:>7.3f}s")
        print("BENCH_JSON " + json.dumps(figures))
        return 0
    finally:
        for worker in workers:
            stop_worker(worker)
        for reader in readers:
            reader.stop()
        cleanup(ns, regions, stores, copies)
        shutil.rmtree(folder, ignore_errors=True)


def cleanup(ns: Namespace, regions: dict[str, dict[str, str]], stores: Any, copies: dict[str, Namespace]) -> None:
    for region in REGIONS:
        admin = KafkaAdmin(regions[region]["kafka_bootstrap"])
        mine = [t for t in admin._admin.list_topics(timeout=10).topics if ns.name in t]
        admin.delete_topics(mine)
    cluster = new_cluster(stores.cassandra_host, stores.cassandra_port, security=stores.security.cassandra)
    es = Elasticsearch(stores.elasticsearch_url)
    try:
        session = cluster.connect()
        for copy in copies.values():
            for target in copy.targets.values():
                if target.type == "cassandra":
                    session.execute(f"DROP KEYSPACE IF EXISTS {target.keyspace}")
                elif target.type == "elasticsearch":
                    drop_target_index(es, target.index)
    finally:
        cluster.shutdown()
        es.close()


if __name__ == "__main__":
    sys.exit(main())
