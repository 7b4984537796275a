"""A running worker's metrics move, its logs are JSON, and a crashed agent turns its health red."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.model import Op
from tests.integration.pipeline import WorkerProcess, cassandra_rows, create_namespace, free_port, wait_until

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_move_while_entries_flow_and_logs_are_json(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    ns = create_namespace(endpoints, tmp_path / "ns")
    port = free_port()
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log", metrics_port=port).start()
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        wait_until(lambda: _reachable(port), 60, "the metrics endpoint", worker.tail)
        _, before = _get(port, "/metrics")
        assert _sample(before, "walstream_entries_total", namespace=ns.name) == 0
        entries = [writer.prepare(ns.name, f"m{i}", Op.UPSERT, {"color": "red", "qty": i}) for i in range(300)]
        assert all(f.result(60).ok for f in [writer.submit_entry(e) for e in entries])
        wait_until(lambda: len(cassandra_rows(stores[0], ns.keyspace)) == 300, 90, "the entries", worker.tail)

        def counted() -> bool:
            _, text = _get(port, "/metrics")
            return (
                _sample(text, "walstream_entries_total", namespace=ns.name, target="primary", outcome="applied") == 300
                and _sample(text, "walstream_entries_total", namespace=ns.name, target="search", outcome="applied")
                == 300
                and _sample(text, "walstream_cdc_total", namespace=ns.name, op="c") == 300
                and _sample(text, "walstream_end_to_end_seconds_count", namespace=ns.name) == 300
            )

        wait_until(counted, 30, "the counters to move", lambda: _get(port, "/metrics")[1][-3000:])
        wait_until(lambda: "walstream_consumer_lag{" in _get(port, "/metrics")[1], 30, "the lag gauge")
        status, body = _get(port, "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True
        assert _get(port, "/readyz")[0] == 200

        lines = [line for line in worker.log.read_text().splitlines() if line.startswith("{")]
        assert lines, worker.tail()
        parsed = [json.loads(line) for line in lines]
        assert all({"ts", "level", "logger", "message"} <= set(p) for p in parsed)
    finally:
        writer.close()
        worker.stop()
        ns.drop(*stores)


def _reachable(port: int) -> bool:
    try:
        return _get(port, "/healthz")[0] in (200, 503)
    except OSError:
        return False


def test_a_crashed_agent_turns_the_health_endpoint_red(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    ns = create_namespace(endpoints, tmp_path / "ns")
    port = free_port()
    worker = WorkerProcess(
        ns, tmp_path / "data", tmp_path / "worker.log", metrics_port=port, extra_args=("--crash-grace", "60")
    ).start()
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        assert writer.write(ns.name, "first", Op.UPSERT, {"color": "red", "qty": 1}).ok
        wait_until(lambda: "first" in cassandra_rows(stores[0], ns.keyspace), 90, "the worker", worker.tail)
        assert _get(port, "/healthz")[0] == 200
        # An operator deletes the change topic: the agent can no longer make its outcome durable and crashes.
        KafkaAdmin(endpoints.kafka_bootstrap).delete_topics([topics.cdc_topic(ns.name)])
        time.sleep(2)
        assert writer.write(ns.name, "second", Op.UPSERT, {"color": "red", "qty": 2}).ok
        wait_until(lambda: _get(port, "/healthz")[0] == 503, 60, "the health endpoint to report the crash", worker.tail)
        status, body = _get(port, "/healthz")
        assert status == 503 and "crashed" in json.loads(body)["crash"], body
        assert worker.alive()  # still up during the grace period, so a probe can see why
    finally:
        writer.close()
        worker.stop()
        ns.drop(*stores)


def test_a_trace_context_travels_from_the_writer_to_the_log_and_the_change_topic(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    from confluent_kafka import Consumer

    ns = create_namespace(endpoints, tmp_path / "ns")
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        result = writer.write(
            ns.name, "traced", Op.UPSERT, {"color": "red", "qty": 1}, headers={"traceparent": traceparent}
        )
        assert result.ok

        def headers_on(topic: str) -> dict[str, bytes]:
            consumer = Consumer(
                {
                    "bootstrap.servers": endpoints.kafka_bootstrap,
                    "group.id": f"h-{time.time_ns()}",
                    "auto.offset.reset": "earliest",
                }
            )
            consumer.subscribe([topic])
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    msg = consumer.poll(0.5)
                    if msg is not None and not msg.error() and msg.key() == b"traced":
                        return dict(msg.headers() or [])
            finally:
                consumer.close()
            raise AssertionError(f"no record for 'traced' on {topic}\n{worker.tail()}")

        assert headers_on(topics.wal_topic(ns.name))["traceparent"] == traceparent.encode()
        assert headers_on(topics.cdc_topic(ns.name))["traceparent"] == traceparent.encode()
    finally:
        writer.close()
        worker.stop()
        ns.drop(*stores)


def test_readiness_means_partitions_assigned_table_recovered_and_applying(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    ns = create_namespace(endpoints, tmp_path / "ns")
    port = free_port()
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log", metrics_port=port).start()
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        assert writer.write(ns.name, "first", Op.UPSERT, {"color": "red", "qty": 1}).ok
        wait_until(lambda: "first" in cassandra_rows(stores[0], ns.keyspace), 90, "the worker", worker.tail)
        wait_until(lambda: _get(port, "/readyz")[0] == 200, 60, "the worker to be ready", worker.tail)
        state = json.loads(_get(port, "/readyz")[1])
        assert state["partitions_assigned"] and state["table_recovered"] and not state["rebalancing"]

        worker.kill()  # no goodbye: the group waits for the session of the dead member to expire
        worker.start()
        readings: list[tuple[int, dict[str, object]]] = []

        def ready_again() -> bool:
            try:
                status, body = _get(port, "/readyz")
            except OSError:
                return False  # not listening yet
            readings.append((status, json.loads(body)))
            return status == 200

        wait_until(ready_again, 120, "the restarted worker to be ready", worker.tail)
        # Before it had its partitions and their state, it said so instead of claiming to be ready.
        assert readings[0][0] == 503 and not readings[0][1]["partitions_assigned"], readings[0]
        assert writer.write(ns.name, "second", Op.UPSERT, {"color": "red", "qty": 2}).ok
        wait_until(lambda: "second" in cassandra_rows(stores[0], ns.keyspace), 60, "it to apply", worker.tail)
    finally:
        writer.close()
        worker.stop()
        ns.drop(*stores)
