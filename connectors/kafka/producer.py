"""A durable Kafka producer: acks=all, idempotence on, each send an asyncio future with a three-valued answer."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connectors.endpoints import Kafka
from connectors.kafka.config import producer_config
from streams.ports import Delivery, Durable, Headers, Outgoing

#: Errors after which the record is certainly not in the log: the answer is FALSE, not UNKNOWN.
_DEFINITELY_NOT_STORED = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError._INVALID_ARG,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.POLICY_VIOLATION,
    }
)


class DurableProducer:
    """The ``streams.ports.Producer`` on one librdkafka producer; a background thread serves delivery reports
    into the event loop."""

    def __init__(self, bootstrap: Kafka, overrides: Mapping[str, Any] | None = None) -> None:
        self._producer = Producer(producer_config(bootstrap, overrides))
        self._settlers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Settler] = weakref.WeakKeyDictionary()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="walstream-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Delivery:
        """Send one record and wait for its durable answer."""
        return await self.send_nowait(topic, key, value, headers, partition)

    def send_nowait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Delivery]:
        """Enqueue and return the future, so many sends can be awaited together."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()
        settler = self._settlers.get(loop)
        if settler is None:
            settler = self._settlers[loop] = _Settler(loop)
        add = settler.add

        def report(err: KafkaError | None, msg: Message) -> None:
            add(future, _delivery(err, msg))

        self._produce(topic, key, value, headers, partition, report)
        return future

    def send_many(self, records: Sequence[Outgoing]) -> asyncio.Future[list[Delivery]]:
        """One future for many records: cheaper than a future per record when a caller writes in bulk."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Delivery]] = loop.create_future()
        if not records:
            future.set_result([])
            return future
        settler = self._settlers.get(loop)
        if settler is None:
            settler = self._settlers[loop] = _Settler(loop)
        batch = _Batch(future, records, settler)
        for index, record in enumerate(records):
            self._produce(
                record.topic, record.key, record.value, record.headers, record.partition, batch.reporter(index)
            )
        return future

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Any, partition: int | None, report: Any
    ) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": report}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                # The local queue is full: this is backpressure, wait for deliveries to drain it.
                self._producer.flush(0.1)
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                report(err, None)
                return

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still pending."""
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> int:
        pending = self.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=5)
        return pending

    def reaches_kafka(self, timeout: float = 2.0) -> bool:
        """Whether the cluster answers a metadata request within ``timeout`` (blocks: call it off the loop)."""
        try:
            return bool(self._producer.list_topics(timeout=timeout).brokers)
        except KafkaException:
            return False


class _Batch:
    """The answers of one ``send_many``: filled in from the poll thread, handed over once all are in."""

    def __init__(self, future: asyncio.Future[list[Delivery]], records: Sequence[Outgoing], settler: _Settler) -> None:
        self._future = future
        self._records = records
        self._settler = settler
        self._answers: list[Delivery | None] = [None] * len(records)
        self._missing = len(records)
        self._lock = threading.Lock()

    def reporter(self, index: int) -> Callable[[KafkaError | None, Message | None], None]:
        def report(err: KafkaError | None, msg: Message | None) -> None:
            d = _delivery(err, msg)
            entry_id = self._records[index].entry_id
            self._answers[index] = Delivery(d.durable, d.message, d.topic, d.partition, d.offset, entry_id)
            with self._lock:
                self._missing -= 1
                done = self._missing == 0
            if done:
                self._settler.add(self._future, self._answers)

        return report


class _Settler:
    """Hands one event loop its delivery reports in bursts: librdkafka reports deliveries one by one from the poll
    thread, and the first report of a burst wakes the loop once to settle every report that arrived meanwhile."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: collections.deque[tuple[asyncio.Future[Any], Any]] = collections.deque()
        self._scheduled = False

    def add(self, future: asyncio.Future[Any], delivery: Any) -> None:
        """Any thread. (The order below is what makes it safe: append, then schedule if no drain is pending.)"""
        self._pending.append((future, delivery))
        if not self._scheduled:
            self._scheduled = True
            # A closed loop raises: nobody waits for these answers any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """In the loop. Unmark first, then take everything: a report added after the last take schedules anew."""
        self._scheduled = False
        pending = self._pending
        while pending:
            future, delivery = pending.popleft()
            if not future.done():
                future.set_result(delivery)


def _delivery(err: KafkaError | None, msg: Message | None) -> Delivery:
    if err is None and msg is not None:
        return Delivery(Durable.TRUE, "", msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
    if err is None:
        return Delivery(Durable.UNKNOWN, "no delivery report")
    code = err.code()
    text = f"{err.name()}: {err.str()}"
    if code in _DEFINITELY_NOT_STORED or (not err.retriable() and code != KafkaError._MSG_TIMED_OUT and err.fatal()):
        return Delivery(Durable.FALSE, text)
    return Delivery(Durable.UNKNOWN, text)
