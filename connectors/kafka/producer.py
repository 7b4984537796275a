"""A durable Kafka producer: acks=all, idempotence on, each send an asyncio future with a three-valued answer."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
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


#: A delivery report waiting for its event loop: the loop, the future, and ``convert(a, b)`` its result.
_Report = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[Any, Any], Any], Any, Any]


class DurableProducer:
    """The ``streams.ports.Producer`` on one librdkafka producer; a background thread serves delivery reports
    into the event loop.

    A delivery callback only queues its raw report; whoever served the callbacks (the poll thread after each
    ``poll()``, or a ``flush()``) then hands everything queued to each event loop at once, so a burst of reports
    costs a loop one wake-up, and the reports become Deliveries in the loop.
    """

    def __init__(self, bootstrap: Kafka, overrides: Mapping[str, Any] | None = None) -> None:
        self._producer = Producer(producer_config(bootstrap, overrides))
        self._reports: collections.deque[_Report] = collections.deque()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="walstream-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            if self._producer.poll(0.1):
                self._hand_over()

    def _hand_over(self) -> None:
        """Any thread, after serving delivery callbacks: one ``call_soon_threadsafe`` per loop for all queued.
        Each report is taken by exactly one caller (``popleft`` is atomic)."""
        reports = self._reports
        by_loop: dict[asyncio.AbstractEventLoop, list[_Report]] = {}
        while reports:
            try:
                report = reports.popleft()
            except IndexError:  # another thread took the last one
                break
            taken = by_loop.get(report[0])
            if taken is None:
                by_loop[report[0]] = [report]
            else:
                taken.append(report)
        for loop, taken in by_loop.items():
            # A closed loop raises: nobody waits for these answers any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, taken)

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
        self._produce(topic, key, value, headers, partition, _SingleReporter(loop, future, self._reports))
        return future

    def send_many(self, records: Sequence[Outgoing]) -> asyncio.Future[list[Delivery]]:
        """One future for many records: cheaper than a future per record when a caller writes in bulk."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Delivery]] = loop.create_future()
        if not records:
            future.set_result([])
            return future
        batch = _Batch(loop, future, records, self._reports)
        produce, reporter = self._producer.produce, batch.reporter
        for index, record in enumerate(records):
            report = reporter(index)
            headers = record.headers
            listed = headers if isinstance(headers, list) else None
            if record.partition is None and (listed is not None or not headers):
                try:  # the usual record, sent at once; anything else goes the long way below
                    produce(record.topic, record.value, record.key, on_delivery=report, headers=listed or None)
                    continue
                except (BufferError, KafkaException):
                    pass
            self._produce(record.topic, record.key, record.value, headers, record.partition, report)
        return future

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        partition: int | None,
        report: Callable[[KafkaError | None, Message | None], None],
    ) -> None:
        produce = self._producer.produce
        while True:
            try:
                if headers:
                    headers = headers if isinstance(headers, list) else list(headers)
                    if partition is None:
                        produce(topic, value, key, on_delivery=report, headers=headers)
                    else:
                        produce(topic, value, key, partition, on_delivery=report, headers=headers)
                elif partition is None:
                    produce(topic, value, key, on_delivery=report)
                else:
                    produce(topic, value, key, partition, on_delivery=report)
                return
            except BufferError:
                # The local queue is full: this is backpressure, wait for deliveries to drain it.
                self._producer.flush(0.1)
                self._hand_over()
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                report(err, None)
                self._hand_over()
                return

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still pending."""
        pending = int(self._producer.flush(timeout))
        self._hand_over()
        return pending

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
    """The answers of one ``send_many``, filled in by the delivery callbacks; once all are in, the batch is queued
    to its loop, which turns them into Deliveries.

    It keeps as few objects alive as it can while the records are in flight (the records' ids and topics, not the
    records; a delivered record's partition and offset, not its message; one small callable per record):
    thousands of writes in flight otherwise fill the collector's oldest generation and make it run full
    collections, which cost more than the writes.
    """

    __slots__ = (
        "count",
        "errors",
        "failed",
        "future",
        "ids",
        "loop",
        "offsets",
        "partitions",
        "remaining",
        "reports",
        "topics",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[list[Delivery]],
        records: Sequence[Outgoing],
        reports: collections.deque[_Report],
    ) -> None:
        self.loop = loop
        self.future = future
        self.reports = reports
        self.ids = [r.entry_id for r in records]
        self.topics = [r.topic for r in records]
        self.count = len(records)
        self.partitions = [0] * self.count
        self.offsets = [0] * self.count
        self.errors: list[KafkaError | None] = [None] * self.count
        self.failed: list[int] = []  # the records answered with an error (or none at all)
        # next() on a count is atomic: callbacks from two threads (poll, flush) cannot both see the last one.
        self.remaining = itertools.count(1)

    def reporter(self, index: int) -> _Reporter:
        return _Reporter(self, index)

    def answers(self, _unused: None) -> list[Delivery]:
        """In the loop: one Delivery per record, in order, each with its entry id."""
        true = Durable.TRUE
        answers = [
            Delivery(true, "", topic, partition, offset, entry_id)
            for topic, partition, offset, entry_id in zip(
                self.topics, self.partitions, self.offsets, self.ids, strict=True
            )
        ]
        for index in self.failed:
            answers[index] = _delivery(self.errors[index], None, self.ids[index])
        return answers


class _SingleReporter:
    """The delivery callback of one ``send_nowait`` (one small object, like a batch's ``_Reporter``)."""

    __slots__ = ("future", "loop", "reports")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Delivery], reports: collections.deque[_Report]
    ) -> None:
        self.loop = loop
        self.future = future
        self.reports = reports

    def __call__(self, err: KafkaError | None, msg: Message | None) -> None:
        self.reports.append((self.loop, self.future, _delivery, err, msg))


class _Reporter:
    """The delivery callback of one record of a batch."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self.batch = batch
        self.index = index

    def __call__(self, err: KafkaError | None, msg: Message | None) -> None:
        batch, index = self.batch, self.index
        if err is None and msg is not None:  # keep the two numbers, not the message (fewer objects alive)
            batch.partitions[index] = msg.partition() or 0
            batch.offsets[index] = msg.offset() or 0
        else:
            batch.errors[index] = err
            batch.failed.append(index)
        if next(batch.remaining) == batch.count:
            batch.reports.append((batch.loop, batch.future, _Batch.answers, batch, None))


def _settle(reports: list[_Report]) -> None:
    """In the loop: answer every future handed over (one already cancelled is left alone)."""
    for _loop, future, convert, a, b in reports:
        if not future.done():
            future.set_result(convert(a, b))


def _delivery(err: KafkaError | None, msg: Message | None, entry_id: str = "") -> Delivery:
    if err is None and msg is not None:
        return Delivery(Durable.TRUE, "", msg.topic() or "", msg.partition() or 0, msg.offset() or 0, entry_id)
    if err is None:
        return Delivery(Durable.UNKNOWN, "no delivery report", entry_id=entry_id)
    code = err.code()
    text = f"{err.name()}: {err.str()}"
    if code in _DEFINITELY_NOT_STORED or (not err.retriable() and code != KafkaError._MSG_TIMED_OUT and err.fatal()):
        return Delivery(Durable.FALSE, text, entry_id=entry_id)
    return Delivery(Durable.UNKNOWN, text, entry_id=entry_id)
