"""The producer SDK: write an entry to a namespace's log and get a durable answer (TRUE, FALSE or UNKNOWN)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from connectors.endpoints import Kafka
from connectors.kafka.producer import DurableProducer
from connectors.kafka.transactions import BatchFault, TransactionalWriter
from connectors.sqs.client import ENDPOINT_SETTING, SqsAccess, SqsUnavailable
from connectors.sqs.log import QueuedEntry, SqsLog
from streams import topics
from streams.codec import Codec
from streams.core.schedule import due_ms, queue_delay_s
from streams.model import Op, WalEntry, new_entry
from streams.namespaces import Namespace, UnknownTargetError
from streams.payload import PayloadCodec, PayloadError
from streams.ports import Delivery, Durable, Producer
from streams.tracing import TRACE_HEADERS, with_trace

T = TypeVar("T")

#: The message attribute with the entry's id (the trace context travels in attributes of its own names).
ENTRY_ID_ATTRIBUTE = "walstream-entry-id"


class WalWriter:
    """Asynchronous and batched (librdkafka batches concurrent writes); acks=all with idempotence on.

    Every write is answered with a Delivery whose ``entry_id`` names the entry. Bad input is answered with FALSE
    and a reason before anything is sent; a timeout is UNKNOWN, after which the caller retries with the same
    idempotency key and sequence.
    """

    def __init__(
        self,
        bootstrap: Kafka,
        namespaces: Mapping[str, Namespace],
        codec: Codec | None = None,
        producer_overrides: Mapping[str, Any] | None = None,
        producer: Producer | None = None,
        sqs: SqsAccess | None = None,
        sqs_max_delay_s: int = 900,
    ) -> None:
        """``producer`` replaces the Kafka producer built from ``bootstrap`` (tests pass an in-memory one).
        Namespaces with ``backend: sqs`` are written to their queue at ``sqs``; a delay longer than
        ``sqs_max_delay_s`` is held by the queue that long, and the workers send it on with its remainder."""
        self._namespaces = dict(namespaces)
        self._payloads = {name: PayloadCodec(ns.payload) for name, ns in self._namespaces.items()}
        self._codec = codec or Codec()
        self._producer: Producer = producer or DurableProducer(bootstrap, producer_overrides)
        self._queues = {name: topics.sqs_queue(name) for name, ns in self._namespaces.items() if ns.backend == "sqs"}
        self._sqs = SqsLog(sqs) if sqs is not None and self._queues else None
        self._sqs_max_delay_s = sqs_max_delay_s

    def prepare(
        self,
        namespace: str,
        key: str,
        op: Op | str,
        payload: bytes | Mapping[str, Any] | None = None,
        *,
        targets: Sequence[str] = (),
        idempotency_key: str | None = None,
        sequence: int | None = None,
        delay_ms: int = 0,
        jitter_ms: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> WalEntry:
        """Validate and build the entry; raises ValueError naming the problem."""
        ns = self._namespaces.get(namespace)
        if ns is None:
            raise ValueError(f"unknown namespace {namespace!r}; known: {', '.join(sorted(self._namespaces)) or 'none'}")
        if type(op) is not Op:
            try:
                op = Op(op)
            except ValueError:
                raise ValueError(f"op must be UPSERT or DELETE, got {op!r}") from None
        codec = self._payloads[namespace]
        if op is Op.DELETE:
            body = b""
        elif payload is None:
            raise ValueError("an UPSERT needs a payload")
        elif isinstance(payload, bytes | bytearray):
            body = bytes(payload)
            codec.decode(body)  # refuses what the workers could never apply
        else:
            body = codec.encode(payload)
            if len(body) > ns.payload.max_bytes:
                raise PayloadError(
                    f"payload of {len(body)} bytes is over the namespace's limit of {ns.payload.max_bytes}"
                )
        try:
            resolved = ns.resolve_targets(targets) if targets else ()
        except UnknownTargetError as exc:
            raise ValueError(str(exc)) from None
        return new_entry(
            namespace,
            key,
            op,
            body,
            sequence=sequence,
            targets=resolved,
            idempotency_key=idempotency_key,
            delay_ms=delay_ms,
            jitter_ms=jitter_ms,
            headers=with_trace(headers),
        )

    async def write(self, namespace: str, key: str, op: Op | str, payload: Any = None, **options: Any) -> Delivery:
        try:
            entry = self.prepare(namespace, key, op, payload, **options)
        except ValueError as exc:
            return Delivery(Durable.FALSE, str(exc))
        return await self.write_entry(entry)

    async def write_entry(self, entry: WalEntry) -> Delivery:
        if entry.namespace in self._queues:
            if self._sqs is None:
                return _result(entry, Delivery(Durable.FALSE, self._no_endpoint()))
            return _result(entry, await self._sqs.send(self._queued(entry)))
        record = self._codec.log_record(entry)
        delivery = await self._producer.send(record.topic, record.key, record.value, record.headers)
        return _result(entry, delivery)

    async def write_many(self, entries: Sequence[WalEntry]) -> list[Delivery]:
        """Write prepared entries in bulk: one answer per entry, in order. Entries of one key keep their order in
        the log (a Kafka log; an SQS queue keeps no order, the targets' versions make it irrelevant). Cheaper per
        entry than ``write_entry`` (one future for the lot, not one each)."""
        codec = self._codec
        if not any(e.namespace in self._queues for e in entries):
            return await self._producer.send_many([codec.log_record(e) for e in entries])
        queued = [i for i, e in enumerate(entries) if e.namespace in self._queues]
        logged = [i for i, e in enumerate(entries) if e.namespace not in self._queues]
        answers: list[Delivery] = [Delivery(Durable.UNKNOWN)] * len(entries)
        if logged:
            sent = await self._producer.send_many([codec.log_record(entries[i]) for i in logged])
            for i, delivery in zip(logged, sent, strict=True):
                answers[i] = delivery
        if self._sqs is None:
            sent = [Delivery(Durable.FALSE, self._no_endpoint())] * len(queued)
        else:
            sent = await self._sqs.send_many([self._queued(entries[i]) for i in queued])
        for i, delivery in zip(queued, sent, strict=True):
            answers[i] = _result(entries[i], delivery)
        return answers

    def uses_sqs(self, namespace: str) -> bool:
        """Whether ``namespace`` is written to an SQS queue (no transactions there)."""
        return namespace in self._queues

    def check_queues(self) -> None:
        """Raise SqsUnavailable (naming the setting) unless every SQS namespace's queue answers."""
        for queue in self._queues.values():
            self._queue_log().check(queue)

    def _queue_log(self) -> SqsLog:
        if self._sqs is None:
            raise SqsUnavailable(self._no_endpoint())
        return self._sqs

    def _no_endpoint(self) -> str:
        return (
            f"namespace(s) {', '.join(sorted(self._queues))} use backend sqs and no SQS endpoint is configured; "
            f"set {ENDPOINT_SETTING} (the local stack sets it: `walstream stack env`)"
        )

    def _queued(self, entry: WalEntry) -> QueuedEntry:
        due = due_ms(entry)
        delay = queue_delay_s(due, int(time.time() * 1000), self._sqs_max_delay_s) if due else 0
        attributes = {ENTRY_ID_ATTRIBUTE: entry.entry_id}
        attributes.update({k: entry.headers[k] for k in TRACE_HEADERS if k in entry.headers})
        return QueuedEntry(self._queues[entry.namespace], self._codec.encode_entry(entry), attributes, delay)

    def flush(self, timeout: float = 30.0) -> int:
        return self._producer.flush(timeout)

    def close(self, timeout: float = 30.0) -> int:
        if self._sqs is not None:
            self._sqs.close()
        return self._producer.close(timeout)

    def reaches_kafka(self, timeout: float = 2.0) -> bool:
        """Whether the producer gets Kafka's metadata within ``timeout`` (blocks); an in-memory one always does."""
        producer = self._producer
        return producer.reaches_kafka(timeout) if isinstance(producer, DurableProducer) else True


class AtomicWalWriter:
    """Writes a batch of entries atomically: one Kafka transaction, so readers that read committed records (the
    workers do) see all of the batch or none of it. A small pool of transactional producers serves batches
    concurrently; ``transactional_id_prefix`` should be stable per replica, so a restarted one fences its
    predecessor's open transactions."""

    def __init__(
        self,
        bootstrap: Kafka,
        codec: Codec | None = None,
        *,
        size: int = 2,
        transactional_id_prefix: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._codec = codec or Codec()
        self._transactions = TransactionalWriter(
            bootstrap, size=size, transactional_id_prefix=transactional_id_prefix, timeout_s=timeout_s
        )

    async def write_batch(
        self, entries: Sequence[WalEntry], fault: BatchFault | None = None
    ) -> tuple[Delivery, tuple[Delivery, ...]]:
        """The batch's answer and, when it is TRUE, where each entry landed. ``fault`` is for tests: called after
        each entry is produced, raising aborts the transaction."""
        records = [self._codec.log_record(e) for e in entries]
        outcome = await self._transactions.write(records, fault)
        return outcome.verdict, outcome.placed

    def close(self, timeout: float = 10.0) -> None:
        self._transactions.close(timeout)


class SyncWalWriter:
    """The same writer for code without an event loop: each call blocks until its durable answer."""

    def __init__(self, bootstrap: Kafka, namespaces: Mapping[str, Namespace], **kwargs: Any) -> None:
        self._writer = WalWriter(bootstrap, namespaces, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="walstream-sdk", daemon=True)
        self._thread.start()

    def prepare(self, namespace: str, key: str, op: Op | str, payload: Any = None, **options: Any) -> WalEntry:
        return self._writer.prepare(namespace, key, op, payload, **options)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def write(self, namespace: str, key: str, op: Op | str, payload: Any = None, **options: Any) -> Delivery:
        return self._call(self._writer.write(namespace, key, op, payload, **options), None)

    def submit_entry(self, entry: WalEntry) -> concurrent.futures.Future[Delivery]:
        """Start writing a prepared entry; many can be in flight at once."""
        return asyncio.run_coroutine_threadsafe(self._writer.write_entry(entry), self._loop)

    def write_many(self, entries: Sequence[WalEntry], timeout: float | None = None) -> list[Delivery]:
        """Write prepared entries in bulk (WalWriter.write_many): one answer per entry, in order."""
        return self._call(self._writer.write_many(entries), timeout)

    def submit(self, namespace: str, key: str, op: Op | str, payload: Any = None, **options: Any) -> Any:
        """Start a write and return a concurrent future, so many writes can be in flight at once."""
        return asyncio.run_coroutine_threadsafe(self._writer.write(namespace, key, op, payload, **options), self._loop)

    def close(self, timeout: float = 30.0) -> int:
        pending = self._writer.close(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        return pending


def _result(entry: WalEntry, d: Delivery) -> Delivery:
    return Delivery(d.durable, d.message, d.topic, d.partition, d.offset, entry.entry_id)
