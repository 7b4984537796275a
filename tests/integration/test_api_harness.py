"""Shared helpers of the API integration tests: namespaces on the real Kafka, a server in a thread, log readers."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors.kafka.admin import KafkaAdmin
from streams import topics
from streams.api.server import RunningServer, ServerOptions, start_server
from streams.api.service import WalService
from streams.codec import Codec
from streams.model import WalEntry
from streams.namespaces import Namespace, load_namespace
from streams.worker.targets import topic_specs

T = TypeVar("T")

AVRO_SCHEMA = {
    "type": "record",
    "name": "Item",
    "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}],
}


#: Namespaces whose topics the tests created, dropped when each test module ends.
_created: list[tuple[str, Namespace]] = []


@pytest.fixture(scope="module", autouse=True)
def drop_created_topics() -> Iterator[None]:
    """Import into a test module to remove the topics of the namespaces it created once it is done."""
    yield
    while _created:
        bootstrap, namespace = _created.pop()
        KafkaAdmin(bootstrap).delete_topics(namespace.topics())


def write_namespace(
    folder: Path,
    bootstrap: str,
    *,
    producers: Sequence[str] = ("*",),
    deleters: Sequence[str] = ("*",),
    payload: Mapping[str, Any] | None = None,
    partitions: int = 3,
    remove_at_end: bool = True,
) -> Namespace:
    """A fresh namespace YAML in ``folder``, loaded and validated, with its topics created on the real Kafka.
    ``remove_at_end=False`` for a Kafka the test stops itself (its own): its topics go with it."""
    name = f"t{uuid.uuid4().hex[:12]}"
    document: dict[str, Any] = {
        "name": name,
        "partitions": partitions,
        "payload": dict(payload or {"format": "json", "max_bytes": 2048}),
        "targets": {
            "primary": {
                "type": "cassandra",
                "keyspace": "walstream_api_test",
                "table": name,
                "key_column": "id",
                "columns": {"sku": {"type": "text"}},
            },
            "search": {"type": "elasticsearch", "index": name, "fields": {"sku": "keyword"}},
        },
    }
    document["authorization"] = {"producers": list(producers), "deleters": list(deleters)}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    namespace = load_namespace(path)
    KafkaAdmin(bootstrap).ensure_topics(topic_specs(namespace))
    if remove_at_end:
        _created.append((bootstrap, namespace))
    end_offsets(bootstrap, namespace)  # waits until every partition of the new log has a leader
    return namespace


@dataclass
class ApiHarness:
    """A running server on its own event loop thread; tests talk to it with the blocking client."""

    running: RunningServer
    loop: asyncio.AbstractEventLoop

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def service(self) -> WalService:
        return self.running.service

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def hold_writes(self) -> Callable[[], None]:
        """Make every accepted call wait right before it writes; returns the function that releases them."""
        gate = asyncio.Event()

        async def wait() -> None:
            await gate.wait()

        self.service.before_write = wait
        return lambda: self.loop.call_soon_threadsafe(gate.set)


@contextmanager
def running_api(bootstrap: str, namespaces: Sequence[Namespace], **options: Any) -> Iterator[ApiHarness]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="api-test-server", daemon=True)
    thread.start()
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    opts = ServerOptions(**options)
    running = asyncio.run_coroutine_threadsafe(
        start_server(bootstrap, {ns.name: ns for ns in namespaces}, opts), loop
    ).result(60)
    harness = ApiHarness(running, loop)
    try:
        yield harness
    finally:
        harness.run(running.stop(grace_s=5.0), timeout=90)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


#: Errors of a topic created a moment ago whose partitions have no leader yet.
_SETTLING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
}


def end_offsets(bootstrap: str, namespace: Namespace, timeout_s: float = 30.0) -> dict[int, int]:
    """The log's end offsets; retried while a fresh topic's partitions are still electing their leaders."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdmin(bootstrap).end_offsets(topics.wal_topic(namespace.name))
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            settling = error is not None and (error.retriable() or error.code() in _SETTLING)
            if not settling or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def grew_by(before: Mapping[int, int], after: Mapping[int, int]) -> int:
    return sum(after[p] - before.get(p, 0) for p in after)


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes
    entry: WalEntry


def read_log(
    bootstrap: str, namespace: Namespace, *, committed_only: bool = True, timeout_s: float = 20.0
) -> list[Record]:
    """Every record of the namespace's log, read from the start up to the current end (read_committed by default)."""
    topic = topics.wal_topic(namespace.name)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"api-test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    codec = Codec()
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[Record] = []
        # A partition reports EOF once everything before its end (the last stable offset, for read_committed),
        # records and transaction markers alike, has been read.
        remaining = set(partitions)
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                continue
            entry = codec.decode_entry(message.value())
            records.append(Record(message.partition(), message.offset(), message.key(), entry))
        if remaining:
            raise AssertionError(f"could not read {topic} to its end within {timeout_s}s: {sorted(remaining)} left")
        return records
    finally:
        consumer.close()
