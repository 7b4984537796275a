"""What the shared pipeline sends, turned into queue operations for an SQS namespace: a retry extends the
message's visibility by its tier's wait, a dead letter goes to the dead-letter queue with its reason in
attributes, and change events (and any Kafka target) go to Kafka as for a Kafka namespace."""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.sqs.client import encode_body
from connectors.sqs.consumer import QueueClient, Received
from streams import topics
from streams.codec import Codec
from streams.pipeline.batching import retrieve
from streams.ports import Delivery, Durable, Headers, Outgoing, Producer

#: Message attributes of a dead letter in an SQS namespace's dead-letter queue.
REASON = "walstream-reason"
ERROR_CLASS = "walstream-error-class"
ATTEMPTS = "walstream-attempts"
PENDING_TARGETS = "walstream-pending-targets"
FAILED_AT = "walstream-failed-at-ms"
FIRST_ERROR = "walstream-first-error"


@dataclass(slots=True)
class InFlight:
    """A received message while its batch is applied: ``kept`` once a retry hid it again (not to be deleted)."""

    message: Received
    kept: bool = False
    first_error: str | None = None


#: First errors of messages waiting for a retry, kept for their next receive (at most this many).
_FIRST_ERRORS_KEPT = 100_000


@dataclass(slots=True)
class Tracker:
    """The messages in flight of one namespace, by the offset the pipeline sees them under, and the first error
    of each message that waits for a retry (a hidden message keeps its attributes: the worker remembers it)."""

    messages: dict[int, InFlight] = field(default_factory=dict)
    next_offset: int = 0
    first_errors: collections.OrderedDict[str, str] = field(default_factory=collections.OrderedDict)

    def add(self, message: Received) -> int:
        self.next_offset += 1
        first = self.first_errors.pop(message.message_id, None) or message.attributes.get(FIRST_ERROR)
        self.messages[self.next_offset] = InFlight(message, first_error=first)
        return self.next_offset

    def remember(self, message_id: str, first_error: str) -> None:
        self.first_errors[message_id] = first_error
        while len(self.first_errors) > _FIRST_ERRORS_KEPT:
            self.first_errors.popitem(last=False)


class QueueTable:
    """The idempotency state of an SQS namespace's keys, in this worker's memory (at most ``limit`` keys, the
    least recently used dropped first). SQS has no partitions, so no worker owns a key: the state only spares
    repeated writes and repeated change events for what this worker itself saw (see the README)."""

    def __init__(self, limit: int = 500_000) -> None:
        self._state: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self._limit = limit

    def get(self, key: bytes) -> Any:
        value = self._state.get(key)
        if value is not None:
            self._state.move_to_end(key)
        return value

    def persist(self, changes: Sequence[tuple[bytes, int, Mapping[str, Any]]]) -> asyncio.Future[list[Delivery]]:
        done: asyncio.Future[list[Delivery]] = asyncio.get_running_loop().create_future()
        done.set_result([Delivery(Durable.TRUE)] * len(changes))
        return done

    def set(self, key: bytes, value: Mapping[str, Any]) -> None:
        self._state[key] = value
        self._state.move_to_end(key)
        while len(self._state) > self._limit:
            self._state.popitem(last=False)


class QueueFollowUps:
    """The Producer the namespace's Applier and Router send through. Records for the retry tiers and the DLQ
    topic become operations on the message they came from (named by the origin offset); the rest goes to
    ``kafka``."""

    def __init__(self, namespace: str, queue: QueueClient, tracker: Tracker, kafka: Producer, codec: Codec) -> None:
        self._queue = queue
        self._tracker = tracker
        self._kafka = kafka
        self._codec = codec
        self._retry_prefix = topics.wal_topic(namespace) + ".retry."
        self._dlq = topics.dlq_topic(namespace)

    def send_nowait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Delivery]:
        if topic.startswith(self._retry_prefix) and value is not None:
            return self._task(self._retry(value))
        if topic == self._dlq and value is not None:
            return self._task(self._dead_letter(value, headers or ()))
        return self._kafka.send_nowait(topic, key, value, headers, partition)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Delivery:
        return await self.send_nowait(topic, key, value, headers, partition)

    def send_many(self, records: Sequence[Outgoing]) -> asyncio.Future[list[Delivery]]:
        if all(not self._ours(r.topic) for r in records):
            return self._kafka.send_many(records)

        async def each() -> list[Delivery]:
            futures = [self.send_nowait(r.topic, r.key, r.value, r.headers, r.partition) for r in records]
            return list(await asyncio.gather(*futures))

        return self._task(each())

    def flush(self, timeout: float = 30.0) -> int:
        return self._kafka.flush(timeout)

    def close(self, timeout: float = 30.0) -> int:
        return 0  # the Kafka producer is the worker's; it closes it

    def _ours(self, topic: str) -> bool:
        return topic.startswith(self._retry_prefix) or topic == self._dlq

    def _task(self, work: Any) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(work)
        task.add_done_callback(retrieve)
        return task

    async def _retry(self, value: bytes) -> Delivery:
        """Hide the message until its tier's time is over: SQS hands it out again then, one receive later."""
        envelope = self._codec.decode_retry_envelope(value)
        held = self._tracker.messages.get(envelope.origin.offset)
        if held is None:
            return Delivery(Durable.FALSE, f"no message in flight at offset {envelope.origin.offset}")
        wait_s = max(0, math.ceil((envelope.due_ms - time.time() * 1000) / 1000))
        try:
            await self._queue.hide(held.message.receipt, wait_s)
        except Exception as exc:  # noqa: BLE001 - the batch is not acknowledged; the message comes back anyway
            return Delivery(Durable.FALSE, f"could not hide the message for its retry: {exc}")
        held.kept = True
        if envelope.first_error:
            self._tracker.remember(held.message.message_id, envelope.first_error)
        return Delivery(Durable.TRUE, topic=self._queue.queue)

    async def _dead_letter(self, value: bytes, headers: Headers) -> Delivery:
        letter = self._codec.decode_dead_letter(value)
        attributes = {
            REASON: letter.reason,
            ERROR_CLASS: letter.error_class,
            ATTEMPTS: str(letter.attempts),
            PENDING_TARGETS: ",".join(letter.pending_targets),
            FAILED_AT: str(letter.failed_at_ms),
        }
        held = self._tracker.messages.get(letter.origin.offset)
        if held is not None:
            attributes.update({k: v for k, v in held.message.attributes.items() if k not in attributes})
        attributes.update({name: raw.decode("utf-8", "replace") for name, raw in headers})
        try:
            message_id = await self._queue.send(encode_body(letter.raw), attributes, dead=True)
        except Exception as exc:  # noqa: BLE001 - the batch is not acknowledged; the message comes back anyway
            return Delivery(Durable.FALSE, f"could not store the dead letter: {exc}")
        return Delivery(Durable.TRUE, message_id, self._queue.dlq)
