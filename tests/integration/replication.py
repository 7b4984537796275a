"""Two regions for the replication tests and the bench: each its own Kafka, MirrorMaker 2 between them, and each
its own keyspace and index on the shared Cassandra and Elasticsearch; a worker per region and a writer per region."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from connectors.elasticsearch.generations import drop_target_index
from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.kafka.consumer import MissingTopic, read_to_end
from connectors.local.stack import LocalStack
from streams.client.sdk import WalWriter
from streams.codec import Codec
from streams.model import Op, WalEntry, new_entry
from streams.namespaces import Namespace, load_namespace
from streams.ports import Durable
from tests.integration.pipeline import (
    REPO,
    ScratchNamespace,
    WorkerProcess,
    cassandra_rows,
    es_docs,
    expected_rows,
    free_port,
    namespace_document,
)

REGIONS = ("east", "west")
#: What a two-region test needs of its own: both Kafka clusters and MirrorMaker 2 (the stores are shared).
REGION_SERVICES = ("kafka", "kafka-west", "mirrormaker")


@dataclass
class Region:
    name: str
    endpoints: Endpoints
    suffix: str
    env: dict[str, str]

    @property
    def kafka(self) -> str:
        return self.endpoints.kafka_bootstrap


def regions_of(stack: LocalStack, stores: Endpoints) -> dict[str, Region]:
    """Both regions of ``stack`` (its two Kafka clusters), with the stores of ``stores``."""
    spec = stack.region_endpoints()
    for name in REGIONS:
        spec[name]["cassandra_contact"] = f"{stores.cassandra_host}:{stores.cassandra_port}"
        spec[name]["elasticsearch_url"] = stores.elasticsearch_url
    found = {}
    for name in REGIONS:
        env = {"WALSTREAM_REGION": name, "WALSTREAM_REGION_ENDPOINTS": json.dumps(spec)}
        eps = replace(stores, kafka_bootstrap=spec[name]["kafka_bootstrap"])
        found[name] = Region(name, eps, spec[name]["store_suffix"], env)
    return found


@dataclass
class ReplicatedNamespace:
    namespace: Namespace
    directory: Path
    regions: dict[str, Region]
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.namespace.name

    def keyspace(self, region: str) -> str:
        return self.name + self.regions[region].suffix

    def index(self, region: str) -> str:
        return (self.name + self.regions[region].suffix).replace("_", "-")

    def start_workers(self, tmp: Path) -> None:
        for name, region in self.regions.items():
            scratch = ScratchNamespace(self.namespace, self.directory, region.endpoints)
            log = tmp / f"worker-{name}.log"
            worker = WorkerProcess(scratch, tmp / f"data-{name}", log, metrics_port=free_port(), env=region.env)
            self.workers.append(worker.start())

    def applied_by_origin(self, region: str) -> dict[str, float]:
        """``walstream_replicated_entries_total`` of the region's worker, by origin region."""
        worker = self.workers[list(self.regions).index(region)]
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("walstream_replicated_entries_total{") and f'namespace="{self.name}"' in line:
                origin = line.split('origin="', 1)[1].split('"', 1)[0]
                found[origin] = float(line.rsplit(" ", 1)[1])
        return found

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def logs(self) -> str:
        return "\n".join(f"--- worker {w.log.name}\n{w.tail(30)}" for w in self.workers)

    def drop(self, session: Session, es: Elasticsearch) -> None:
        for name, region in self.regions.items():
            admin = KafkaAdmin(region.endpoints.kafka)
            mine = [t for t in admin._admin.list_topics(timeout=10).topics if self.name in t]
            admin.delete_topics(mine)
            session.execute(f"DROP KEYSPACE IF EXISTS {self.keyspace(name)}")
            drop_target_index(es, self.index(name))


def region_env(rns_or_regions: dict[str, Region], directory: Path, region: str = REGIONS[0]) -> dict[str, str]:
    """The environment of a `walstream` command run in ``region``."""
    here = rns_or_regions[region]
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_NAMESPACE_DIR": str(directory),
        "WALSTREAM_KAFKA_BOOTSTRAP": here.kafka,
        "WALSTREAM_CASSANDRA_CONTACT": f"{here.endpoints.cassandra_host}:{here.endpoints.cassandra_port}",
        "WALSTREAM_ELASTICSEARCH_URL": here.endpoints.elasticsearch_url,
        **here.env,
    }


def replication_status(rns: ReplicatedNamespace) -> list[dict[str, Any]]:
    """`walstream replication status NS --json`, run in the first region."""
    done = subprocess.run(
        [sys.executable, "-m", "streams", "replication", "status", rns.name, "--json"],
        cwd=REPO,
        env=region_env(rns.regions, rns.directory),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def create_replicated(regions: dict[str, Region], directory: Path, partitions: int = 3) -> ReplicatedNamespace:
    """A fresh namespace in both regions, made by `walstream namespaces apply` run in the first region."""
    doc = namespace_document(f"t{os.urandom(5).hex()}", partitions, replication={"regions": list(REGIONS)})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = region_env(regions, directory)
    done = subprocess.run(
        [sys.executable, "-m", "streams", "namespaces", "apply"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return ReplicatedNamespace(load_namespace(path), directory, regions)


def workload(namespace: str, count: int, keys: int, seed: int, tie_every: int = 10) -> dict[str, list[WalEntry]]:
    """``count`` entries over ``keys`` keys, each written in one of the regions; every ``tie_every``-th step
    writes the same key in both regions with the same sequence (different payloads, sometimes a delete)."""
    rng = random.Random(seed)
    base = time.time_ns() // 1000
    written: dict[str, list[WalEntry]] = {name: [] for name in REGIONS}
    step = 0
    total = 0
    while total < count:
        step += 1
        sequence = base + step * 10
        key = f"k{rng.randrange(keys)}"

        def one(region: str, key: str = key, sequence: int = sequence) -> WalEntry:
            if rng.random() < 0.2:
                return new_entry(namespace, key, Op.DELETE, b"", sequence=sequence)
            payload = {"color": f"{region}-{rng.randrange(1000)}", "qty": rng.randrange(10**6)}
            return new_entry(namespace, key, Op.UPSERT, json.dumps(payload).encode(), sequence=sequence)

        where = list(REGIONS) if step % tie_every == 0 else [rng.choice(REGIONS)]
        for region in where:
            written[region].append(one(region))
            total += 1
    return written


def model_of(written: dict[str, list[WalEntry]]) -> dict[str, dict[str, Any] | None]:
    """Last writer wins by sequence; between equal sequences the region listed later wins."""
    newest: dict[str, tuple[tuple[int, int], WalEntry]] = {}
    for rank, region in enumerate(REGIONS):
        for e in written[region]:
            order = (e.sequence, rank)
            if e.key not in newest or order > newest[e.key][0]:
                newest[e.key] = (order, e)
    return {k: None if e.op is Op.DELETE else json.loads(e.payload) for k, (_, e) in newest.items()}


async def _write(kafka: str, ns: Namespace, entries: list[WalEntry], chunk: int, pause_s: float) -> None:
    writer = WalWriter(kafka, {ns.name: ns})
    try:
        for start in range(0, len(entries), chunk):
            answers = await writer.write_many(entries[start : start + chunk])
            assert all(a.durable is Durable.TRUE for a in answers), answers[0]
            await asyncio.sleep(pause_s)
    finally:
        writer.close()


def write(rns: ReplicatedNamespace, written: dict[str, list[WalEntry]], chunk: int = 500, pause_s: float = 0) -> None:
    """Each region's entries through the SDK to its own log, ``chunk`` at a time with ``pause_s`` between."""
    for region, entries in written.items():
        asyncio.run(_write(rns.regions[region].kafka, rns.namespace, entries, chunk, pause_s))


def store_states(rns: ReplicatedNamespace, session: Session, es: Elasticsearch) -> dict[str, dict[str, Any]]:
    """Each of the four stores' rows: (region, store) -> key -> (color, qty)."""
    states = {}
    for region in rns.regions:
        states[f"{region}/cassandra"] = cassandra_rows(session, rns.keyspace(region))
        states[f"{region}/elasticsearch"] = es_docs(es, rns.index(region))
    return states


def converged(rns: ReplicatedNamespace, model: dict[str, Any], session: Session, es: Elasticsearch) -> bool:
    want = expected_rows(model)
    return all(rows == want for rows in store_states(rns, session, es).values())


def differences(rns: ReplicatedNamespace, model: dict[str, Any], session: Session, es: Elasticsearch) -> str:
    want = expected_rows(model)
    out = []
    for name, rows in store_states(rns, session, es).items():
        wrong = {k for k in set(want) | set(rows) if want.get(k) != rows.get(k)}
        out.append(f"{name}: {len(rows)} rows, {len(wrong)} differ from the model (e.g. {sorted(wrong)[:3]})")
    return "\n".join(out)


def records(kafka: str, topic: str) -> list[Any]:
    try:
        return list(read_to_end(kafka, topic, idle_limit_s=30))
    except MissingTopic:
        return []


def entry_ids(kafka: str, topic: str) -> list[str]:
    codec = Codec()
    return [codec.decode_entry(r.value).entry_id for r in records(kafka, topic)]


def announced(kafka: str, cdc: str) -> dict[str, list[tuple[str, int]]]:
    """Each entry's change events on a region's change topic: (op, sequence) of each, in topic order."""
    codec = Codec()
    found: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for r in records(kafka, cdc):
        event = codec.decode_change_event(r.value)
        found[event.source.entry_id].append((event.op.value, event.source.sequence))
    return found


@contextmanager
def running(rns: ReplicatedNamespace, tmp: Path, session: Session, es: Elasticsearch) -> Iterator[None]:
    rns.start_workers(tmp)
    try:
        yield
    finally:
        rns.stop_workers()
        rns.drop(session, es)


def all_ids(written: dict[str, list[WalEntry]]) -> Iterable[str]:
    return (e.entry_id for entries in written.values() for e in entries)
