"""Namespaces with ``backend: sqs`` on the stack's real ElasticMQ: writes through the SDK and the API, the SQS
worker's exact reconciliation with a change event per applied entry, delays (never early, past the per-message
cap), a killed worker, a restarted ElasticMQ, poison messages and DLQ replay, and the errors of a bad setup."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from cassandra.cluster import Session
from confluent_kafka import Consumer
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.kafka.consumer import read_to_end
from connectors.sqs.client import SqsAccess
from streams import topics
from streams.api.messages import BatchEntrySpec, BatchRequest
from streams.client.grpc import WalClient, write_request
from streams.client.sdk import SyncWalWriter, WalWriter
from streams.client.stream import ApiError
from streams.codec import Codec
from streams.config import Settings
from streams.model import ChangeOp, Op, WalEntry, new_entry
from streams.namespaces import NamespaceError, parse_namespace
from streams.ports import Delivery, Durable
from tests.integration.pipeline import (
    REPO,
    ScratchNamespace,
    WorkerProcess,
    cassandra_rows,
    create_namespace,
    delivery_lateness,
    es_docs,
    free_port,
    namespace_document,
    own_stack,
    wait_until,
)
from tests.integration.test_api_harness import running_api

pytestmark = pytest.mark.integration


# -- helpers -------------------------------------------------------------------------------------------------------


def _sqs(endpoints: Endpoints) -> SqsAccess:
    assert endpoints.sqs is not None, "the open local stack runs ElasticMQ: its endpoint must be known"
    return endpoints.sqs


def _client(access: SqsAccess) -> Any:
    return boto3.client("sqs", **access.client_kwargs())


def _queue_counts(access: SqsAccess, queue: str) -> dict[str, int]:
    client = _client(access)
    url = client.get_queue_url(QueueName=queue)["QueueUrl"]
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return {
        "visible": int(attributes["ApproximateNumberOfMessages"]),
        "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        "delayed": int(attributes["ApproximateNumberOfMessagesDelayed"]),
    }


@contextlib.contextmanager
def sqs_namespace(endpoints: Endpoints, directory: Path, **overrides: Any) -> Iterator[ScratchNamespace]:
    """A throwaway namespace with ``backend: sqs``: its queues, CDC topic, table and index, removed after."""
    ns = create_namespace(endpoints, directory, backend="sqs", **overrides)
    try:
        yield ns
    finally:
        from connectors.cassandra.sink import new_cluster

        cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port)
        es = Elasticsearch(endpoints.elasticsearch_url, request_timeout=30)
        try:
            ns.drop(cluster.connect(), es)
        finally:
            cluster.shutdown()
            es.close()
        client = _client(_sqs(endpoints))
        for queue in (topics.sqs_queue(ns.name), topics.sqs_dlq_queue(ns.name)):
            with contextlib.suppress(Exception):
                client.delete_queue(QueueUrl=client.get_queue_url(QueueName=queue)["QueueUrl"])


def sqs_worker(ns: ScratchNamespace, tmp_path: Path, name: str = "worker", **settings: str) -> WorkerProcess:
    env = {"WALSTREAM_SQS_ENDPOINT": str(_sqs(ns.endpoints).endpoint), "WALSTREAM_SQS_WAIT_S": "1", **settings}
    return WorkerProcess(ns, tmp_path / f"{name}-data", tmp_path / f"{name}.log", env=env)


def write_all(
    endpoints: Endpoints, ns: ScratchNamespace, entries: Sequence[WalEntry], **options: Any
) -> list[Delivery]:
    async def run() -> list[Delivery]:
        writer = WalWriter(endpoints.kafka, {ns.name: ns.namespace}, sqs=_sqs(endpoints), **options)
        try:
            return await writer.write_many(entries)
        finally:
            writer.close()

    return asyncio.run(run())


def change_events(endpoints: Endpoints, ns: str) -> list[tuple[str, ChangeOp, str]]:
    codec = Codec()
    found = []
    for record in read_to_end(endpoints.kafka_bootstrap, topics.cdc_topic(ns)):
        event = codec.decode_change_event(record.value)
        found.append((event.key, event.op, event.source.entry_id))
    return found


def rows_and_docs(stores: tuple[Session, Elasticsearch], ns: ScratchNamespace) -> tuple[dict[str, Any], dict[str, Any]]:
    session, es = stores
    return cassandra_rows(session, ns.keyspace), es_docs(es, ns.index)


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def client_env(endpoints: Endpoints, ns: ScratchNamespace, **more: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_NAMESPACE_DIR": str(ns.directory),
        "WALSTREAM_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "WALSTREAM_CASSANDRA_CONTACT": f"{endpoints.cassandra_host}:{endpoints.cassandra_port}",
        "WALSTREAM_ELASTICSEARCH_URL": endpoints.elasticsearch_url,
        "WALSTREAM_SQS_ENDPOINT": str(_sqs(endpoints).endpoint),
        **more,
    }


# -- writes, reconciliation, change events -----------------------------------------------------------------------


def test_sdk_and_api_writes_reconcile_exactly_with_one_change_event_per_applied_entry(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    with sqs_namespace(endpoints, tmp_path / "ns") as ns:
        worker = sqs_worker(ns, tmp_path).start()
        sdk = SyncWalWriter(endpoints.kafka, {ns.name: ns.namespace}, sqs=_sqs(endpoints))
        written: list[tuple[str, ChangeOp, str]] = []  # (key, expected op, entry id), in wave order
        model: dict[str, tuple[str, int]] = {}
        try:
            with (
                running_api(endpoints.kafka_bootstrap, [ns.namespace], sqs=_sqs(endpoints)) as api,
                WalClient(api.target) as client,
            ):
                # WriteBatch is a Kafka transaction: an SQS namespace refuses it instead of pretending.
                batch = BatchRequest(ns.name, (BatchEntrySpec("b0", 1, b'{"color":"navy","qty":1}'),))
                with pytest.raises(ApiError) as refused:
                    client.write_batch(batch)
                assert refused.value.code.name == "FAILED_PRECONDITION"
                assert "sqs" in refused.value.details and "WriteToLog" in refused.value.details

                # Waves: each key at most once per wave, and a wave starts once the one before is applied, so
                # every entry is applied in turn (an unordered queue could otherwise let a newer one overtake).
                waves: list[list[tuple[str, str, int | None]]] = [
                    [(f"k{i}", "UPSERT", i) for i in range(60)],
                    [(f"k{i}", "UPSERT", 100 + i) for i in range(0, 60, 2)],
                    [(f"k{i}", "DELETE", None) for i in range(0, 60, 3)],
                ]
                live: set[str] = set()
                for number, wave in enumerate(waves):
                    for index, (key, op, qty) in enumerate(wave):
                        payload = None if qty is None else {"color": f"c{number}", "qty": qty}
                        if index % 3 == 0:
                            delivery = sdk.write(ns.name, key, op, payload)
                        elif index % 3 == 1:
                            delivery = client.write_to_log(write_request(ns.name, key, op, payload))
                        else:
                            delivery = client.stream_write(write_request(ns.name, key, op, payload))
                        assert delivery.durable is Durable.TRUE, delivery.message
                        expected = ChangeOp.DELETE if op == "DELETE" else (
                            ChangeOp.UPDATE if key in live else ChangeOp.CREATE
                        )  # fmt: skip
                        written.append((key, expected, delivery.entry_id))
                        if qty is None:
                            live.discard(key)
                            model.pop(key, None)
                        else:
                            live.add(key)
                            model[key] = (f"c{number}", qty)
                    want = dict(model)
                    wait_until(
                        lambda want=want: rows_and_docs(stores, ns) == (want, want),  # type: ignore[misc]
                        120,
                        f"wave {number} in both stores",
                        worker.tail,
                    )
            events = change_events(endpoints, ns.name)
            assert sorted(events) == sorted(written), "one change event per applied entry, with its c/u/d"
            assert worker.alive(), worker.tail()
        finally:
            sdk.close()
            worker.stop()


# -- delays ------------------------------------------------------------------------------------------------------------


def test_delays_up_to_a_minute_are_never_early_and_delays_past_the_per_message_cap_are_honoured(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    outbox = f"outbox.{time.time_ns()}"
    cap_s = 4  # the queue holds a message at most this long; longer delays go round with their remainder
    with sqs_namespace(
        endpoints,
        tmp_path / "ns",
        persona="delay-queue",
        targets={"outbox": {"type": "kafka", "topic": outbox}},
    ) as ns:
        worker = sqs_worker(ns, tmp_path, WALSTREAM_SQS_MAX_DELAY_S=str(cap_s)).start()
        consumer = Consumer(
            {
                "bootstrap.servers": endpoints.kafka_bootstrap,
                "group.id": f"outbox-{time.time_ns()}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([outbox])
        rnd = random.Random(14)
        sdk = SyncWalWriter(endpoints.kafka, {ns.name: ns.namespace}, sqs=_sqs(endpoints), sqs_max_delay_s=cap_s)
        try:
            delays = [0, 500, 1_500, 3_000, 60_000, *(rnd.randrange(0, 60_000) for _ in range(35))]
            entries = [
                sdk.prepare(ns.name, f"job-{i}", Op.UPSERT, {"n": i}, delay_ms=d, jitter_ms=rnd.choice([0, 700]))
                for i, d in enumerate(delays)
            ]
            assert all(f.result(60).ok for f in [sdk.submit_entry(e) for e in entries])
            due, delivered, lateness = delivery_lateness(consumer, entries, 180, worker.tail)
            print(f"SQS delay lateness ms: p50 {lateness[len(lateness) // 2]}, max {lateness[-1]}")
            assert lateness[0] >= 0, f"delivered {-lateness[0]} ms early"
            long_ones = [k for k in due if due[k] - entries[0].lifecycle.original_write_time // 1000 > cap_s * 3000]
            assert long_ones and all(delivered[k] >= due[k] for k in long_ones)
        finally:
            sdk.close()
            consumer.close()
            worker.stop()
            from connectors.kafka.admin import KafkaAdmin

            KafkaAdmin(endpoints.kafka).delete_topics([outbox])


# -- a killed worker, a restarted server ----------------------------------------------------------------------------


def test_a_worker_killed_with_messages_in_flight_has_them_applied_again_exactly(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    with sqs_namespace(endpoints, tmp_path / "ns") as ns:
        rnd = random.Random(7)
        entries = [
            new_entry(ns.name, f"k{rnd.randrange(150)}", Op.UPSERT, b'{"color":"c%d","qty":%d}' % (i % 7, i))
            for i in range(3_000)
        ]
        assert all(d.ok for d in write_all(endpoints, ns, entries))
        newest: dict[str, WalEntry] = {}
        for e in entries:
            if e.key not in newest or e.sequence > newest[e.key].sequence:
                newest[e.key] = e
        want = {k: (json.loads(e.payload)["color"], json.loads(e.payload)["qty"]) for k, e in newest.items()}
        worker = sqs_worker(ns, tmp_path, "first", WALSTREAM_SQS_VISIBILITY_S="5").start()
        session, _ = stores
        try:
            wait_until(lambda: len(cassandra_rows(session, ns.keyspace)) >= 20, 120, "the first rows", worker.tail)
            worker.kill()
            counts = _queue_counts(_sqs(endpoints), topics.sqs_queue(ns.name))
            assert counts["in_flight"] > 0, counts  # received, not deleted: they come back after 5 s
            assert counts["visible"] + counts["in_flight"] < len(entries)
        finally:
            worker.stop()
        again = sqs_worker(ns, tmp_path, "second").start()
        try:
            wait_until(lambda: rows_and_docs(stores, ns) == (want, want), 240, "exact reconciliation", again.tail)
            wait_until(
                lambda: _queue_counts(_sqs(endpoints), topics.sqs_queue(ns.name))["visible"] == 0,
                60,
                "an empty queue",
            )
        finally:
            again.stop()


def test_elasticmq_restarted_or_killed_mid_stream_loses_no_acknowledged_entry(
    settings: Settings, endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    # An ElasticMQ of this test's own, so restarting it disturbs no other test; the other services are shared.
    with own_stack(settings.local, "walstream-sqs-restart-", services=["elasticmq"]) as stack:
        mine = dataclasses.replace(endpoints, sqs=stack.endpoints().sqs)
        with sqs_namespace(mine, tmp_path / "ns") as ns:
            first = [new_entry(ns.name, f"a{i}", Op.UPSERT, b'{"color":"a","qty":%d}' % i) for i in range(150)]
            assert all(d.ok for d in write_all(mine, ns, first))
            stack.down()  # the entries so far are only in ElasticMQ: no worker has read them
            stack.up()
            acked: set[str] = {e.key for e in first}
            maybe: set[str] = set()
            worker = sqs_worker(ns, tmp_path).start()
            stop = threading.Event()

            def keep_writing() -> None:
                writer = SyncWalWriter(mine.kafka, {ns.name: ns.namespace}, sqs=_sqs(mine))
                try:
                    for i in range(400):
                        if stop.is_set():
                            break
                        delivery = writer.write(ns.name, f"b{i}", Op.UPSERT, {"color": "b", "qty": i})
                        if delivery.durable is Durable.TRUE:
                            acked.add(f"b{i}")
                        elif delivery.durable is Durable.UNKNOWN:
                            maybe.add(f"b{i}")
                        time.sleep(0.02)
                finally:
                    writer.close()

            writing = threading.Thread(target=keep_writing, daemon=True)
            writing.start()
            try:
                session, _ = stores
                wait_until(lambda: len(cassandra_rows(session, ns.keyspace)) >= 40, 120, "the first rows", worker.tail)
                # Mid-stream, and a crash this time: SIGKILL, no chance to flush anything at shutdown.
                stack.signal_service("elasticmq", signal.SIGKILL)
                time.sleep(2)
                stack.up()
                writing.join(timeout=300)
                assert not writing.is_alive()
                stored = set(cassandra_rows(session, ns.keyspace))
                wait_until(
                    lambda: acked <= set(cassandra_rows(session, ns.keyspace)),
                    240,
                    "every acknowledged entry in Cassandra",
                    worker.tail,
                )
                stored = set(cassandra_rows(session, ns.keyspace))
                assert stored <= acked | maybe, sorted(stored - acked - maybe)[:10]
                assert any(k.startswith("b") for k in acked)
            finally:
                stop.set()
                worker.stop()


# -- poison, the dead-letter queue, replay ---------------------------------------------------------------------------


def test_poison_messages_reach_the_dead_letter_queue_the_rest_is_applied_and_replay_works(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    _, es = stores
    schema = {
        "type": "record",
        "name": "Item",
        "fields": [{"name": "color", "type": "string"}, {"name": "qty", "type": "long"}],
    }
    with sqs_namespace(endpoints, tmp_path / "ns", payload={"format": "avro", "schema": schema}) as ns:
        worker = sqs_worker(ns, tmp_path).start()
        codec = Codec()
        access = _sqs(endpoints)
        raw = _client(access)
        url = raw.get_queue_url(QueueName=topics.sqs_queue(ns.name))["QueueUrl"]
        writer = SyncWalWriter(endpoints.kafka, {ns.name: ns.namespace}, sqs=access)
        try:
            good_body = codec.encode_entry(new_entry(ns.name, "x", Op.DELETE, b""))
            poison = {
                "not base64": "this is {not} base64!",
                "random bytes": base64.b64encode(os.urandom(64)).decode(),
                "wrong framing": base64.b64encode(b"\x07\x01" + good_body[2:]).decode(),
                "unknown fingerprint": base64.b64encode(b"\xc3\x01" + b"\xee" * 8 + good_body[10:]).decode(),
                "payload off schema": base64.b64encode(
                    codec.encode_entry(new_entry(ns.name, "bad", Op.UPSERT, b"\xff\xff\xff"))
                ).decode(),
                "unknown namespace": base64.b64encode(
                    codec.encode_entry(new_entry("elsewhere", "y", Op.DELETE, b""))
                ).decode(),
            }
            for body in poison.values():
                raw.send_message(QueueUrl=url, MessageBody=body)
            behind = {f"b{i}": ("green", i) for i in range(30)}
            for key, (color, qty) in behind.items():
                assert writer.write(ns.name, key, Op.UPSERT, {"color": color, "qty": qty}).ok
            wait_until(lambda: rows_and_docs(stores, ns) == (behind, behind), 120, "the good entries", worker.tail)

            env = client_env(endpoints, ns)

            def letters(*filters: str) -> list[str]:
                listed = cli(env, "dlq", "list", ns.name, *filters)
                assert listed.returncode == 0, listed.stderr
                return [line for line in listed.stdout.splitlines()[1:] if line.strip()]

            wait_until(lambda: len(letters()) == len(poison), 60, "the poison in the dead-letter queue", worker.tail)
            listing = "\n".join(letters())
            assert listing.count("undecodable") == 5, listing  # four that never decode, one of another namespace
            assert len(letters("--error-class", "fatal")) == 1  # the payload off its schema
            assert "unknown-namespace" in listing and "unknown-fingerprint" in listing

            # A replayable letter: the search index refuses writes for a while, so entries fail fatally there.
            es.indices.put_settings(index=ns.index, settings={"index.blocks.write": True})
            try:
                blocked = {f"z{i}": ("blue", i) for i in range(3)}
                for key, (color, qty) in blocked.items():
                    assert writer.write(ns.name, key, Op.UPSERT, {"color": color, "qty": qty}).ok
                wait_until(lambda: len(letters("--reason", "cluster_block")) == 3, 90, "the blocked entries")
            finally:
                es.indices.put_settings(index=ns.index, settings={"index.blocks.write": False})
            shown = cli(env, "dlq", "show", ns.name, letters("--reason", "cluster_block")[0].split()[5])
            assert shown.returncode == 0 and '"pending_targets": [\n    "search"\n  ]' in shown.stdout, shown.stdout
            replayed = cli(env, "dlq", "replay", ns.name, "--reason", "cluster_block")
            assert replayed.returncode == 0, replayed.stdout + replayed.stderr
            assert "replayed 3" in replayed.stdout + replayed.stderr
            want = behind | blocked
            wait_until(lambda: rows_and_docs(stores, ns) == (want, want), 120, "the replayed entries", worker.tail)
            assert len(letters()) == len(poison)
            assert worker.alive(), worker.tail()
        finally:
            writer.close()
            worker.stop()


# -- retries ---------------------------------------------------------------------------------------------------------


def test_a_retryable_failure_waits_in_the_queue_by_its_tier_and_an_exhausted_budget_reaches_the_dead_letter_queue(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    retry = {"tiers": ["1s", "3s"], "backoff_multiplier": 1.0, "max_attempts": 3}
    with sqs_namespace(endpoints, tmp_path / "ns", retry=retry) as ns:
        worker = sqs_worker(ns, tmp_path).start()
        writer = SyncWalWriter(endpoints.kafka, {ns.name: ns.namespace}, sqs=_sqs(endpoints))
        env = client_env(endpoints, ns)
        # A read-only-allow-delete block makes Elasticsearch answer 429: retryable, as when it is overloaded.
        block = {"index.blocks.read_only_allow_delete": True}
        unblock = {"index.blocks.read_only_allow_delete": None}
        try:
            assert writer.write(ns.name, "warm", Op.UPSERT, {"color": "w", "qty": 0}).ok
            wait_until(lambda: "warm" in es_docs(es, ns.index), 90, "the worker to start", worker.tail)
            es.indices.put_settings(index=ns.index, settings=block)
            try:
                for i in range(3):
                    assert writer.write(ns.name, f"r{i}", Op.UPSERT, {"color": "r", "qty": i}).ok
                wait_until(
                    lambda: {f"r{i}" for i in range(3)} <= set(cassandra_rows(session, ns.keyspace)),
                    60,
                    "Cassandra to hold the entries the index refuses",
                    worker.tail,
                )
                # Received, failed at the index, hidden again for their tier: in flight, not deleted.
                counts = _queue_counts(_sqs(endpoints), topics.sqs_queue(ns.name))
                assert counts["in_flight"] + counts["visible"] >= 1, counts
            finally:
                es.indices.put_settings(index=ns.index, settings=unblock)
            want = {"warm": ("w", 0)} | {f"r{i}": ("r", i) for i in range(3)}
            wait_until(lambda: es_docs(es, ns.index) == want, 60, "a retry to reach the index", worker.tail)

            es.indices.put_settings(index=ns.index, settings=block)
            try:
                for i in range(2):
                    assert writer.write(ns.name, f"x{i}", Op.UPSERT, {"color": "x", "qty": i}).ok

                def exhausted() -> list[str]:
                    listed = cli(env, "dlq", "list", ns.name, "--error-class", "exhausted")
                    return [line for line in listed.stdout.splitlines()[1:] if line.strip()]

                wait_until(lambda: len(exhausted()) == 2, 90, "the budget to run out", worker.tail)
                shown = cli(env, "dlq", "show", ns.name, exhausted()[0].split()[5])
                assert '"attempts": 3' in shown.stdout and "cluster_block_exception" in shown.stdout, shown.stdout
                assert "(first error: " in shown.stdout, shown.stdout  # remembered across the receives
            finally:
                es.indices.put_settings(index=ns.index, settings=unblock)
            replayed = cli(env, "dlq", "replay", ns.name, "--error-class", "exhausted")
            assert "replayed 2" in replayed.stdout + replayed.stderr, replayed.stdout + replayed.stderr
            want |= {f"x{i}": ("x", i) for i in range(2)}
            wait_until(lambda: rows_and_docs(stores, ns) == (want, want), 90, "the replayed entries", worker.tail)
        finally:
            writer.close()
            worker.stop()


# -- a bad setup -------------------------------------------------------------------------------------------------------


def test_a_bad_backend_or_an_sqs_namespace_without_a_reachable_endpoint_is_a_clear_error(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    with pytest.raises(NamespaceError) as bad:
        parse_namespace(namespace_document("wrongbackend", backend="rabbitmq"))
    assert "backend" in str(bad.value) and "'rabbitmq' is not one of kafka, sqs" in str(bad.value)

    directory = tmp_path / "ns"
    directory.mkdir()
    doc = namespace_document("unreached", backend="sqs")
    (directory / "unreached.yaml").write_text(yaml.safe_dump(doc))
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_NAMESPACE_DIR": str(directory),
        "WALSTREAM_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "WALSTREAM_CASSANDRA_CONTACT": f"{endpoints.cassandra_host}:{endpoints.cassandra_port}",
        "WALSTREAM_ELASTICSEARCH_URL": endpoints.elasticsearch_url,
        "WALSTREAM_SQS_ENDPOINT": nowhere,
    }
    applied = cli(env, "namespaces", "apply")
    assert applied.returncode == 2, applied.stdout + applied.stderr
    assert "WALSTREAM_SQS_ENDPOINT" in applied.stderr and nowhere in applied.stderr, applied.stderr
    worked = cli(env, "worker", "--namespaces", "unreached", "--log-format", "text")
    assert worked.returncode == 2, worked.stdout + worked.stderr
    assert "WALSTREAM_SQS_ENDPOINT" in worked.stderr, worked.stderr

    # The SDK without any SQS endpoint answers FALSE, naming the setting, before sending anything.
    ns = parse_namespace(doc)
    writer = SyncWalWriter(endpoints.kafka, {ns.name: ns}, sqs=None)
    try:
        answer = writer.write(ns.name, "k", Op.UPSERT, {"color": "red", "qty": 1})
    finally:
        writer.close()
    assert answer.durable is Durable.FALSE and "WALSTREAM_SQS_ENDPOINT" in answer.message
    with contextlib.suppress(Exception):
        from connectors.kafka.admin import KafkaAdmin

        KafkaAdmin(endpoints.kafka).delete_topics([topics.cdc_topic("unreached")])
