"""Writes WAL entries to SQS queues for the SDK and the API: boto3 calls on a small thread pool, each ending in a
durable answer (never an exception), like the Kafka producer's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from connectors.sqs.client import (
    BATCH,
    SqsAccess,
    SqsUnavailable,
    encode_body,
    queue_url,
    string_attributes,
    sync_client,
)
from streams.ports import Delivery, Durable


@dataclass(frozen=True, slots=True)
class QueuedEntry:
    """One entry for a queue: the encoded entry, its trace context and how long SQS should hold it."""

    queue: str
    value: bytes
    attributes: Mapping[str, str]
    delay_s: int = 0


class SqsLog:
    """Sends entries to their namespace's queue. A send that surely did not happen (the endpoint refused the
    connection, the queue is missing) is FALSE with the reason; a timeout is UNKNOWN."""

    def __init__(self, access: SqsAccess, threads: int = 16) -> None:
        self.access = access
        self._client = sync_client(access, pool=threads * 2)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="walstream-sqs")
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()

    def url(self, queue: str) -> str:
        with self._lock:
            cached = self._urls.get(queue)
        if cached is None:
            cached = queue_url(self._client, self.access, queue)
            with self._lock:
                self._urls[queue] = cached
        return cached

    def check(self, queue: str) -> None:
        """Raise SqsUnavailable (naming the setting) unless ``queue`` answers."""
        self.url(queue)

    async def send(self, entry: QueuedEntry) -> Delivery:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._send_one, entry)

    async def send_many(self, entries: Sequence[QueuedEntry]) -> list[Delivery]:
        """Batches of up to 10 per queue, sent concurrently; one answer per entry, in order."""
        loop = asyncio.get_running_loop()
        chunks: list[list[int]] = []
        by_queue: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            by_queue.setdefault(entry.queue, []).append(index)
        for indices in by_queue.values():
            chunks += [indices[i : i + BATCH] for i in range(0, len(indices), BATCH)]
        answers: list[Delivery | None] = [None] * len(entries)
        results = await asyncio.gather(
            *(loop.run_in_executor(self._pool, self._send_batch, [entries[i] for i in chunk]) for chunk in chunks)
        )
        for chunk, deliveries in zip(chunks, results, strict=True):
            for index, delivery in zip(chunk, deliveries, strict=True):
                answers[index] = delivery
        return [a for a in answers if a is not None]

    def _send_one(self, entry: QueuedEntry) -> Delivery:
        try:
            url = self.url(entry.queue)
            answer = self._client.send_message(QueueUrl=url, **_message(entry))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the answer
            return _failed(entry.queue, exc)
        return Delivery(Durable.TRUE, str(answer.get("MessageId", "")), entry.queue, 0)

    def _send_batch(self, entries: Sequence[QueuedEntry]) -> list[Delivery]:
        queue = entries[0].queue
        try:
            url = self.url(queue)
            answer = self._client.send_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), **_message(e)} for i, e in enumerate(entries)]
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes the answer
            failed = _failed(queue, exc)
            return [failed] * len(entries)
        deliveries = [Delivery(Durable.UNKNOWN, "no answer for this entry in the batch", queue)] * len(entries)
        for ok in answer.get("Successful", []):
            deliveries[int(ok["Id"])] = Delivery(Durable.TRUE, str(ok.get("MessageId", "")), queue, 0)
        for bad in answer.get("Failed", []):
            durable = Durable.UNKNOWN if bad.get("SenderFault") is False else Durable.FALSE
            deliveries[int(bad["Id"])] = Delivery(durable, f"{bad.get('Code')}: {bad.get('Message', '')}", queue)
        return deliveries

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


def _message(entry: QueuedEntry) -> dict[str, Any]:
    message: dict[str, Any] = {"MessageBody": encode_body(entry.value)}
    attributes = string_attributes(dict(entry.attributes))
    if attributes:
        message["MessageAttributes"] = attributes
    if entry.delay_s > 0:
        message["DelaySeconds"] = entry.delay_s
    return message


def _failed(queue: str, exc: BaseException) -> Delivery:
    if isinstance(exc, SqsUnavailable):
        return Delivery(Durable.FALSE, str(exc), queue)
    if isinstance(exc, ReadTimeoutError):
        return Delivery(Durable.UNKNOWN, f"no answer from SQS in time ({exc}); retry with the same idempotency key")
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return Delivery(Durable.FALSE, f"SQS endpoint unreachable: {exc} (check WALSTREAM_SQS_ENDPOINT)", queue)
    if isinstance(exc, ClientError):
        return Delivery(Durable.FALSE, f"SQS refused the message: {exc}", queue)
    if isinstance(exc, BotoCoreError):
        return Delivery(Durable.UNKNOWN, f"SQS call failed: {exc}; retry with the same idempotency key", queue)
    return Delivery(Durable.UNKNOWN, f"SQS call failed: {exc!r}", queue)
