"""The fan-out core on its own, without Faust: where the worker's time goes, and what the core alone can do.

    .venv/bin/python bench/core.py [--entries N] [--depth D]

Runs, in this process and on the stack that is already up, exactly what the worker runs for each batch (the
Batcher, FanoutProcessor, Applier with the namespace's real sinks behind their circuit breakers, the durable
producer for change events) on N pre-encoded WAL records of N unique keys, with a plain dict as the idempotency
table. Nothing is consumed from Kafka and no Faust runtime is around it, so the figure is an upper bound for the
worker: the worker's rate divided by this one says how much of its time goes to the Faust runtime (consumer,
stream, acks, table changelog) rather than to the fan-out itself.

Also measured in the same run: raw Cassandra (as bench/pipeline.py does). It prints the figures and one line
``BENCH_JSON {...}``, checks that Cassandra and Elasticsearch hold N (+ warm-up) rows and documents and that every
change event is on the CDC topic, and removes everything it created. Exit status: 0 done, 2 error, 3 not valid (a
stack service was stopped with SIGSTOP while measuring).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pipeline as bp  # the bench folder is on sys.path when this file runs as a script
import yaml
from elasticsearch import Elasticsearch

from connectors.cassandra.sink import CassandraSink, new_cluster
from connectors.elasticsearch.generations import drop_target_index
from connectors.kafka.admin import KafkaAdmin
from connectors.kafka.producer import DurableProducer
from connectors.local.errors import StackError
from streams import topics
from streams.core.flood import FloodGuard
from streams.metrics import Metrics
from streams.model import Origin
from streams.namespaces import Namespace, load_namespace
from streams.pipeline.apply import Record
from streams.pipeline.batching import Batcher
from streams.pipeline.build import build_applier
from streams.pipeline.fanout import FanoutProcessor
from streams.ports import Delivery, Durable
from streams.worker.targets import Connections, apply_namespaces, build_sinks

BATCH_SIZE = 500  # the worker's default --batch-size


class DictTable:
    """The idempotency table as a plain dict: nothing is persisted (the worker writes a changelog)."""

    def __init__(self) -> None:
        self.data: dict[bytes, Any] = {}

    def get(self, key: bytes) -> Any:
        return self.data.get(key)

    def persist(self, changes: Sequence[Any]) -> asyncio.Future[list[Delivery]]:
        future: asyncio.Future[list[Delivery]] = asyncio.get_running_loop().create_future()
        future.set_result([Delivery(Durable.TRUE) for _ in changes])
        return future

    def set(self, key: bytes, value: Any) -> None:
        self.data[key] = value


BATCH_WITHIN_S = 0.05


async def run_core(
    ns: Namespace, endpoints: Any, records: Sequence[Record], warmup: int, depth: int
) -> dict[str, float]:
    """Push the records through the fan-out core; the clock starts after ``warmup`` records."""
    connections = Connections(endpoints)
    producer = DurableProducer(endpoints.kafka)
    metrics = Metrics()
    failures: list[BaseException] = []
    try:
        # The worker's own builder, with a flood guard that never holds (every record may go to the DLQ).
        guard = FloodGuard(ns.name, len(records), metrics)
        applier = build_applier(ns, build_sinks(ns, connections, producer), producer, metrics, guard=guard)
        processor = FanoutProcessor(applier, DictTable())

        async def process(batch: list[Record]) -> None:
            await processor.process(batch)

        async def ack(batch: list[Record]) -> None:
            return None

        batcher = Batcher(process, ack, BATCH_SIZE, BATCH_WITHIN_S, failures.append, depth=depth)
        for record in records[:warmup]:
            await batcher.add(record)
        await batcher.flush()
        started, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
        for record in records[warmup:]:
            await batcher.add(record)
        await batcher.flush()
        elapsed = time.perf_counter() - started
        cpu, main = time.process_time() - cpu, time.thread_time() - main
    finally:
        await connections.close()
        producer.close()
    if failures:
        raise bp.BenchError(f"the fan-out core failed: {failures[0]!r}")
    n = len(records) - warmup
    return {"seconds": elapsed, "cpu_us_per_entry": cpu / n * 1e6, "main_thread_cpu_us_per_entry": main / n * 1e6}


def run(args: argparse.Namespace) -> dict[str, Any]:
    endpoints, stack_pids = bp.resolve_endpoints()
    bp.say(f"stack: {', '.join(f'{k} {v}' for k, v in endpoints.describe().items())}")
    bp.probe(endpoints)
    watch = bp.StackWatch({service: bp.with_descendants(pid) for service, pid in stack_pids.items()})
    watch.start()

    suffix = secrets.token_hex(4)
    name = f"core_{suffix}"
    tmp = Path(tempfile.mkdtemp(prefix=f"walstream-{name}-"))
    cleanup = bp.Cleanup()
    cleanup.push(f"remove {tmp}", lambda: shutil.rmtree(tmp, ignore_errors=True))
    ns_file = tmp / f"{name}.yaml"
    ns_file.write_text(yaml.safe_dump(bp.namespace_document(name, suffix, args.partitions), sort_keys=False))
    ns = load_namespace(ns_file)
    ctarget = ns.targets_of_type("cassandra")[bp.CASSANDRA_TARGET]
    etarget = ns.targets_of_type("elasticsearch")[bp.ES_TARGET]
    raw_table = ctarget.model_copy(update={"table": "raw_items"})
    admin = KafkaAdmin(endpoints.kafka)
    n, warmup = args.entries, BATCH_SIZE
    figures: dict[str, Any] = {"entries": n, "partitions": args.partitions, "depth": args.depth, "namespace": name}
    try:
        cleanup.push("delete the namespace's topics", lambda: admin.delete_topics(ns.topics()))
        cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port, timeout=30)
        cleanup.push("close the Cassandra session", cluster.shutdown)
        session = cluster.connect()
        cleanup.push(
            f"drop keyspace {ctarget.keyspace}",
            lambda: session.execute(f"DROP KEYSPACE IF EXISTS {ctarget.keyspace}", timeout=120),
        )
        es = Elasticsearch(endpoints.elasticsearch_url, request_timeout=120)
        cleanup.push("close the Elasticsearch client", es.close)
        cleanup.push(f"delete index {etarget.index}", lambda: drop_target_index(es, etarget.index))

        async def create() -> None:
            await apply_namespaces([ns], endpoints)
            connections = Connections(endpoints)
            try:
                await CassandraSink(connections.cassandra(), "raw", raw_table).ensure_schema()
            finally:
                await connections.close()

        bp.say(f"namespace {name}: creating topics ({args.partitions} partitions), keyspace and index")
        asyncio.run(create())

        watch.phase = "raw cassandra"
        cass_s = bp.raw_cassandra(session, raw_table.keyspace, raw_table.table, n, args.cassandra_concurrency)
        figures["raw_cassandra_rate"] = bp.rate(n, cass_s)
        bp.say(f"raw cassandra: {figures['raw_cassandra_rate']:,.0f}/s")

        wal = topics.wal_topic(name)
        records = [
            Record(key, value, Origin(wal, i % args.partitions, i // args.partitions))
            for i, (key, value) in enumerate(bp.wal_records(ns, warmup + n))
        ]
        watch.phase = "core"
        bp.say(
            f"fan-out core: {warmup} warm-up entries, then {n} measured, batches of {BATCH_SIZE}, depth {args.depth}"
        )
        peak = CpuPeak()
        peak.start()
        try:
            core = asyncio.run(run_core(ns, endpoints, records, warmup, args.depth))
        finally:
            peak.stop()
        figures["core_rate"] = bp.rate(n, core["seconds"])
        figures["core_cpu_us_per_entry"] = round(core["cpu_us_per_entry"], 1)
        figures["core_main_thread_cpu_us_per_entry"] = round(core["main_thread_cpu_us_per_entry"], 1)
        figures["ratio_core_vs_raw_cassandra"] = figures["core_rate"] / figures["raw_cassandra_rate"]
        figures["machine_busy_cores"] = round(sum(peak.samples) / max(len(peak.samples), 1), 2)

        watch.phase = "verify"
        rows = bp.cassandra_count(session, ctarget.keyspace, ctarget.table)
        docs = bp.es_count(es, etarget.index)
        offsets = bp.end_offsets(endpoints.kafka_bootstrap, [topics.cdc_topic(name), topics.dlq_topic(name)])
        cdc, dlq = offsets.get(topics.cdc_topic(name), 0), offsets.get(topics.dlq_topic(name), 0)
        expected = warmup + n
        if (rows, docs, cdc, dlq) != (expected, expected, expected, 0):
            raise bp.BenchError(
                f"expected {expected} rows, documents and change events and no dead letter; "
                f"found {rows} rows, {docs} documents, {cdc} change events, {dlq} dead letters"
            )
        figures["verified"] = True
    finally:
        watch.stop()
        problems = cleanup.run()
        if problems:
            bp.say("cleanup left something behind: " + "; ".join(problems))
    figures["frozen_service_seconds"] = watch.frozen
    figures["valid"] = not any(phase in watch.frozen for phase in ("raw cassandra", "core"))
    return figures


class CpuPeak(threading.Thread):
    """Whole-machine busy cores, sampled while the core runs (other load on a shared machine skews the figure)."""

    def __init__(self) -> None:
        super().__init__(name="bench-cpu", daemon=True)
        self._halt = threading.Event()
        self.samples: list[float] = []

    def run(self) -> None:
        last, at = bp.machine_busy_seconds(), time.monotonic()
        while not self._halt.wait(0.5):
            busy, now = bp.machine_busy_seconds(), time.monotonic()
            self.samples.append((busy - last) / (now - at))
            last, at = busy, now

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=3)


def print_report(f: dict[str, Any]) -> None:
    print(f"\nwalstream fan-out core (no Faust): {f['entries']} unique-key upserts, batches of {BATCH_SIZE}")
    print(f"raw Cassandra (prepared, execute_concurrent)   {f['raw_cassandra_rate']:>10,.0f}/s")
    print(f"fan-out core (both sinks + CDC, dict table)    {f['core_rate']:>10,.0f}/s")
    print(f"core / raw Cassandra:                          {f['ratio_core_vs_raw_cassandra']:>10.3f}")
    print(
        f"CPU per entry: {f['core_cpu_us_per_entry']:.0f} us in all, "
        f"{f['core_main_thread_cpu_us_per_entry']:.0f} us on the event loop's thread; "
        f"machine {f['machine_busy_cores']:.2f} cores busy meanwhile"
    )
    if f["frozen_service_seconds"]:
        print(f"NOT VALID: stack services were stopped while measuring: {f['frozen_service_seconds']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000, help="measured entries (default 20000)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the namespace (default 6)")
    parser.add_argument("--depth", type=int, default=2, help="batches in flight in the Batcher (default 2)")
    parser.add_argument("--cassandra-concurrency", type=int, default=100, help="raw Cassandra concurrency")
    args = parser.parse_args(argv)
    if args.entries < 10:
        parser.error("--entries must be at least 10")
    try:
        with bp.terminate_as_interrupt():
            figures = run(args)
    except (bp.BenchError, StackError) as exc:
        bp.say(f"bench: error: {exc}")
        return 2
    except KeyboardInterrupt:
        bp.say("bench: interrupted (cleaned up)")
        return 130
    print_report(figures)
    print("BENCH_JSON " + json.dumps({"bench": "core", **figures}, sort_keys=True), flush=True)
    return 0 if figures["valid"] else 3


if __name__ == "__main__":
    sys.exit(main())
