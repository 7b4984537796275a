"""The front door end to end: WriteToLog and WriteBatch through a real worker, and throttled bulk deletes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.kafka.transactions import fail_after
from streams.api.messages import BatchEntrySpec, BatchRequest, BulkDeleteRequest
from streams.client.grpc import WalClient, write_request
from streams.client.sdk import SyncWalWriter
from streams.model import Op
from streams.ports import Durable
from tests.integration.pipeline import WorkerProcess, cassandra_rows, create_namespace, es_docs, wait_until
from tests.integration.test_api_harness import running_api

pytestmark = pytest.mark.integration


def test_write_to_log_and_write_batch_reach_both_stores_and_aborted_batches_never_do(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns")
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    try:
        with running_api(endpoints.kafka_bootstrap, [ns.namespace]) as api, WalClient(api.target) as client:
            for i in range(20):
                response = client.write_to_log(write_request(ns.name, f"w{i}", "UPSERT", {"color": "teal", "qty": i}))
                assert response.durable is Durable.TRUE, response.message
            batch = BatchRequest(
                ns.name,
                tuple(BatchEntrySpec(f"b{i}", 1, b'{"color":"navy","qty":%d}' % i) for i in range(8)),
            )
            assert client.write_batch(batch).durable is Durable.TRUE
            api.service.batch_fault = fail_after(3)
            try:
                doomed = BatchRequest(
                    ns.name, tuple(BatchEntrySpec(f"x{i}", 1, b'{"color":"red","qty":0}') for i in range(6))
                )
                assert client.write_batch(doomed).durable is Durable.FALSE
            finally:
                api.service.batch_fault = None
            marker = client.write_to_log(write_request(ns.name, "marker", "UPSERT", {"color": "end", "qty": 0}))
            assert marker.durable is Durable.TRUE
        expected = (
            {f"w{i}": ("teal", i) for i in range(20)}
            | {f"b{i}": ("navy", i) for i in range(8)}
            | {"marker": ("end", 0)}
        )
        # The marker was written after the aborted batch, so once it is applied the worker has passed the batch.
        wait_until(lambda: cassandra_rows(session, ns.keyspace) == expected, 90, "the API's writes", worker.tail)
        wait_until(lambda: es_docs(es, ns.index) == expected, 30, "the index")
    finally:
        worker.stop()
        ns.drop(session, es)


def test_throttled_bulk_deletes_never_beat_the_configured_rate(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    rate = 500
    ns = create_namespace(endpoints, tmp_path / "ns", throttle={"max_deletes_per_second": rate})
    keys = [f"d{i}" for i in range(5000)]
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        futures = [writer.submit_entry(writer.prepare(ns.name, k, Op.UPSERT, {"color": "x", "qty": 1})) for k in keys]
        assert all(f.result(60).ok for f in futures)
    finally:
        writer.close()
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    try:
        wait_until(lambda: len(cassandra_rows(session, ns.keyspace)) == len(keys), 120, "the rows", worker.tail)
        samples: list[tuple[float, int]] = []
        with running_api(endpoints.kafka_bootstrap, [ns.namespace]) as api, WalClient(api.target) as client:
            started = time.monotonic()
            response = client.bulk_delete(BulkDeleteRequest(ns.name, tuple(keys)))
            assert response.durable is Durable.TRUE, response.message
        # Watch the table empty: rows left, sampled five times a second.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = session.execute(f"SELECT count(*) FROM {ns.keyspace}.items", timeout=30).one()[0]
            samples.append((time.monotonic(), left))
            if left == 0:
                break
            time.sleep(0.2)
        took = samples[-1][0] - started
        assert samples[-1][1] == 0, worker.tail()
        assert took >= len(keys) / rate * 0.95, f"5000 deletes at {rate}/s took only {took:.1f}s"
        # The fastest second: rows deleted between a sample and the first sample at least a second later.
        fastest = 0.0
        for i, (t0, left0) in enumerate(samples):
            later = next(((t, n) for t, n in samples[i + 1 :] if t - t0 >= 1.0), None)
            if later is not None:
                fastest = max(fastest, (left0 - later[1]) / (later[0] - t0))
        print(f"throttled deletes: {len(keys)} in {took:.1f}s, fastest second {fastest:.0f}/s (limit {rate}/s)")
        assert fastest <= rate * 1.10, f"{fastest:.0f} deletes per second at the fastest (limit {rate}/s)"
        assert fastest >= rate * 0.5  # and the limit is a pace, not a stall
        assert not es_docs(es, ns.index)
    finally:
        worker.stop()
        ns.drop(session, es)
