"""Delayed-queue lateness: entries with delays up to 60 s, delivered to a Kafka topic target; p50/p99 lateness.

Run with the local stack up:  .venv/bin/python bench/delay.py [--entries 400] [--max-delay 60] [--backend sqs]
Lateness is the delivery's broker timestamp minus the entry's due time. The target is p99 <= 1 s, and no
entry may be delivered early. ``--backend sqs`` measures a namespace on the stack's ElasticMQ too, and prints its
figures beside the Kafka ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.local.stack import LocalStack
from connectors.sqs.client import sync_client
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.config import load_settings
from streams.core.schedule import due_ms
from streams.model import Op
from streams.namespaces import load_namespace
from streams.worker.targets import apply_namespaces

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=400)
    parser.add_argument("--max-delay", type=float, default=60.0, help="seconds")
    parser.add_argument(
        "--backend", choices=["kafka", "sqs"], default="kafka", help="sqs: measure an SQS namespace beside Kafka"
    )
    args = parser.parse_args()

    settings = load_settings()
    stack = LocalStack(settings.local)
    if len(stack.pids()) < len(stack.names):
        print("the local stack is not running: `walstream stack up` first", file=sys.stderr)
        return 2
    endpoints = stack.endpoints()
    results = {}
    for backend in ["kafka", "sqs"] if args.backend == "sqs" else ["kafka"]:
        code, figures = run(endpoints, backend, args.entries, args.max_delay)
        if code == 2:
            return 2
        results[backend] = (code, figures)
    if len(results) > 1:
        print("\nbackend  delivered  p50 ms  p99 ms  max ms  early")
        for backend, (_, f) in results.items():
            print(
                f"{backend:<8} {f['delivered']:>9}  {f['lateness_p50_ms']:>6}  {f['lateness_p99_ms']:>6}  "
                f"{f['lateness_max_ms']:>6}  {f['early']:>5}"
            )
    return max(code for code, _ in results.values())


def run(endpoints: Endpoints, backend: str, count: int, max_delay: float) -> tuple[int, dict[str, Any]]:
    """One namespace of ``backend``, its worker, ``count`` delayed entries; (exit code, figures)."""
    name = f"delaybench_{uuid.uuid4().hex[:8]}"
    outbox = f"{name}.due"
    workdir = Path(tempfile.mkdtemp(prefix="walstream-delay-"))
    (workdir / "ns").mkdir()
    (workdir / "ns" / f"{name}.yaml").write_text(
        yaml.safe_dump(
            {
                "name": name,
                "partitions": 3,
                "persona": "delay-queue",
                "backend": backend,
                "targets": {"outbox": {"type": "kafka", "topic": outbox}},
            }
        )
    )
    ns = load_namespace(workdir / "ns" / f"{name}.yaml")
    asyncio.run(apply_namespaces([ns], endpoints))
    env = {**os.environ, "WALSTREAM_NAMESPACE_DIR": str(workdir / "ns"), "WALSTREAM_DATA_DIR": str(workdir / "data")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams", "worker", "--namespaces", name],
        cwd=REPO,
        env=env,
        stdout=(workdir / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    consumer = Consumer(
        {"bootstrap.servers": endpoints.kafka_bootstrap, "group.id": f"{name}-reader", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([outbox])
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {name: ns}, sqs=endpoints.sqs)
    try:
        # Measure the queue, not the worker's start-up: wait until a first entry comes through.
        assert writer.write(name, "warm-up", Op.UPSERT, {"n": -1}).ok
        started = time.monotonic()
        while time.monotonic() - started < 120:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error() and msg.key() == b"warm-up":
                break
        else:
            print("the worker did not start within 120 s; see " + str(workdir / "worker.log"), file=sys.stderr)
            return 2, {}
        rnd = random.Random(1)
        max_ms = int(max_delay * 1000)
        entries = [
            writer.prepare(name, f"job-{i}", Op.UPSERT, {"n": i}, delay_ms=rnd.randrange(0, max_ms))
            for i in range(count)
        ]
        # In bulk: batches of 10 per SQS call, so the queue's lateness is measured rather than the writer's.
        answers = writer.write_many(entries, timeout=120)
        assert all(d.ok for d in answers), f"writes were not durable: {next(d for d in answers if not d.ok)}"
        due = {e.key: due_ms(e) or e.lifecycle.original_write_time // 1000 for e in entries}
        delivered: dict[str, int] = {}
        deadline = time.monotonic() + max_delay + 120
        while len(delivered) < len(entries) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                delivered.setdefault(msg.key().decode(), msg.timestamp()[1])
        lateness = [delivered[k] - due[k] for k in delivered]
        delays = {e.key: e.lifecycle.delay_ms for e in entries}
        worst = sorted(delivered, key=lambda k: due[k] - delivered[k])[:5]
        print("latest: " + ", ".join(f"{k} (delay {delays[k]} ms) {delivered[k] - due[k]} ms late" for k in worst))
        early = [x for x in lateness if x < 0]
        figures = {
            "entries": len(entries),
            "delivered": len(delivered),
            "backend": backend,
            "max_delay_s": max_delay,
            "lateness_p50_ms": percentile(lateness, 0.5) if lateness else None,
            "lateness_p99_ms": percentile(lateness, 0.99) if lateness else None,
            "lateness_max_ms": max(lateness) if lateness else None,
            "early": len(early),
        }
        print(f"{backend}: delivered {len(delivered)}/{len(entries)} delayed entries (delays 0-{max_delay:.0f}s)")
        print(
            f"lateness p50 {figures['lateness_p50_ms']} ms, p99 {figures['lateness_p99_ms']} ms, "
            f"max {figures['lateness_max_ms']} ms; early deliveries: {len(early)}"
        )
        print(json.dumps(figures))
        ok = len(delivered) == len(entries) and not early and (figures["lateness_p99_ms"] or 0) <= 1000
        return (0 if ok else 1), figures
    finally:
        writer.close()
        consumer.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(30)
        admin = KafkaAdmin(endpoints.kafka_bootstrap)
        internal = [t for t in admin._admin.list_topics(timeout=10).topics if t.startswith(f"walstream.{name}")]
        admin.delete_topics([*ns.topics(), outbox, *internal])
        if backend == "sqs" and endpoints.sqs is not None:
            client = sync_client(endpoints.sqs)
            for queue in (topics.sqs_queue(name), topics.sqs_dlq_queue(name)):
                with contextlib.suppress(Exception):
                    client.delete_queue(QueueUrl=client.get_queue_url(QueueName=queue)["QueueUrl"])


if __name__ == "__main__":
    sys.exit(main())
