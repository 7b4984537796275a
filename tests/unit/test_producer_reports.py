"""Delivery reports of the durable producer: queued raw by the callbacks, handed to each loop in one call, turned
into one Delivery per record in order, whichever thread served them."""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any

from confluent_kafka import KafkaError, Message

from connectors.kafka.producer import DurableProducer, _Batch, _Report, _SingleReporter
from streams.ports import Delivery, Durable, Outgoing


def stored(partition: int, offset: int, topic: str = "t") -> Message:
    """What a delivery callback gets for a stored record."""
    return Message(topic=topic, partition=partition, offset=offset)


def handing_over(reports: collections.deque[_Report]) -> Any:
    """A producer without a Kafka client: only its hand-over, on the given queue."""
    producer = object.__new__(DurableProducer)
    producer._reports = reports
    return producer


def test_a_batch_answers_in_record_order_with_entry_ids_and_reasons() -> None:
    async def run() -> list[Delivery]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Delivery]] = loop.create_future()
        reports: collections.deque[_Report] = collections.deque()
        records = [Outgoing(f"wal.ns{i}", b"k", b"v", [], None, f"id-{i}") for i in range(4)]
        batch = _Batch(loop, future, records, reports)
        reporters = [batch.reporter(i) for i in range(4)]
        reporters[2](None, stored(1, 30))
        reporters[0](KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
        reporters[3](KafkaError(KafkaError._MSG_TIMED_OUT), None)
        assert not reports  # not complete yet
        reporters[1](None, stored(0, 7))
        assert len(reports) == 1
        handing_over(reports)._hand_over()
        assert not reports
        return await asyncio.wait_for(future, 5)

    answers = asyncio.run(run())
    assert [a.entry_id for a in answers] == ["id-0", "id-1", "id-2", "id-3"]
    assert [a.durable for a in answers] == [Durable.FALSE, Durable.TRUE, Durable.TRUE, Durable.UNKNOWN]
    assert (answers[1].topic, answers[1].partition, answers[1].offset) == ("wal.ns1", 0, 7)
    assert (answers[2].topic, answers[2].partition, answers[2].offset) == ("wal.ns2", 1, 30)
    assert answers[0].message.startswith("MSG_SIZE_TOO_LARGE")


def test_reports_from_two_threads_complete_a_batch_once() -> None:
    async def run() -> tuple[int, list[Delivery]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Delivery]] = loop.create_future()
        reports: collections.deque[_Report] = collections.deque()
        n = 20_000
        batch = _Batch(loop, future, [Outgoing("t", None, b"v", (), None, str(i)) for i in range(n)], reports)
        reporters = [batch.reporter(i) for i in range(n)]

        def serve(part: range) -> None:
            for i in part:
                reporters[i](None, stored(0, i))

        threads = [threading.Thread(target=serve, args=(range(k, n, 2),)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        completed = len(reports)
        handing_over(reports)._hand_over()
        return completed, await asyncio.wait_for(future, 5)

    completed, answers = asyncio.run(run())
    assert completed == 1
    assert [a.offset for a in answers] == list(range(20_000))


def test_one_hand_over_serves_every_loop_and_skips_cancelled_futures() -> None:
    reports: collections.deque[_Report] = collections.deque()
    producer = handing_over(reports)
    results: dict[str, Any] = {}

    def loop_thread(name: str, ready: threading.Event, done: threading.Event) -> None:
        async def run() -> None:
            loop = asyncio.get_running_loop()
            futures = [loop.create_future() for _ in range(3)]
            futures[1].cancel()
            for i, future in enumerate(futures):
                _SingleReporter(loop, future, reports)(None, stored(0, i))
            ready.set()
            await asyncio.wait_for(asyncio.gather(futures[0], futures[2]), 5)
            results[name] = [futures[0].result().offset, futures[1].cancelled(), futures[2].result().offset]

        asyncio.run(run())
        done.set()

    events = {name: (threading.Event(), threading.Event()) for name in ("a", "b")}
    threads = [threading.Thread(target=loop_thread, args=(name, *evs)) for name, evs in events.items()]
    for t in threads:
        t.start()
    for ready, _ in events.values():
        assert ready.wait(5)
    producer._hand_over()
    for t in threads:
        t.join(10)
    assert results == {"a": [0, True, 2], "b": [0, True, 2]}


def test_a_closed_loop_is_skipped() -> None:
    reports: collections.deque[_Report] = collections.deque()
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    loop.close()
    _SingleReporter(loop, future, reports)(None, stored(0, 1))
    handing_over(reports)._hand_over()  # no error: nobody waits for that answer
    assert not reports
