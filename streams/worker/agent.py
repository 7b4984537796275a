"""The fan-out agent of one namespace: Faust delivers the log in chunks, the pipeline applies them, acks in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streams.core.routing import retry_history
from streams.metrics import Metrics
from streams.model import Origin
from streams.namespaces import Namespace
from streams.pipeline.apply import Applier, Record
from streams.pipeline.batching import Batcher
from streams.pipeline.fanout import FanoutProcessor
from streams.ports import Delivery, Outgoing, Producer
from streams.worker.app import WalApp

_JSON = json.JSONEncoder(separators=(",", ":"))


# The changelog holds one live record per key, but Kafka compacts only closed segments, and the default segment
# closes after 1 GiB or 7 days: until then a restarted worker reads every write since the topic began. Closing a
# segment every ten minutes keeps recovery proportional to the keys, not to the history.
CHANGELOG_TOPIC_CONFIG = {"segment.ms": str(10 * 60 * 1000), "min.cleanable.dirty.ratio": "0.5"}


class ChangelogTable:
    """The ``StateTable`` port on a Faust table: state is read from and set in the table's store directly, and
    written to the table's changelog by our durable producer, on the partition of the record that changed it.
    Faust still owns the table: its changelog topic, recovery on assignment and standby replicas. The records
    are what Faust itself would write (raw key, JSON value), so recovery reads them as its own."""

    def __init__(self, table: Any, producer: Producer) -> None:
        self._table = table
        self._producer = producer
        self._topic = table.changelog_topic.get_topic_name()

    def get(self, key: bytes) -> Any:
        return self._table.data.get(key)

    def persist(self, changes: Sequence[tuple[bytes, int, Mapping[str, Any]]]) -> asyncio.Future[list[Delivery]]:
        topic, encode = self._topic, _JSON.encode
        return self._producer.send_many(
            [Outgoing(topic, key, encode(value).encode(), (), partition) for key, partition, value in changes]
        )

    def set(self, key: bytes, value: Mapping[str, Any]) -> None:
        self._table.data[key] = value


def add_fanout_agent(
    app: WalApp,
    ns: Namespace,
    applier: Applier,
    producer: Producer,
    metrics: Metrics,
    on_fatal: Callable[[BaseException, str], None],
    batch_size: int,
    batch_within_s: float,
) -> None:
    """Declare the namespace's idempotency table, its log topic and the agent that consumes it."""
    table = app.Table(
        f"applied-{ns.name}",
        default=None,
        partitions=ns.partitions,
        key_type=bytes,  # raw keys; values are JSON (KeyState.to_json)
        extra_topic_configs=CHANGELOG_TOPIC_CONFIG,
    )
    processor = FanoutProcessor(applier, ChangelogTable(table, producer))
    # A replicated namespace's agent consumes its region's log and the other regions' logs as one co-partitioned
    # subscription: a key has the same partition in each, so one agent (and one table partition) owns the key.
    logs = ns.logs()
    for log in logs:
        app.chunk(log)
    topic = app.topic(
        *logs,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",  # a chunk's list of records passes through unchanged
        partitions=ns.partitions,
    )
    where = f"fan-out agent of {ns.name}"
    last_ack = metrics.child(metrics.last_ack, ns.name)

    async def fanout(stream: Any) -> None:
        manual = stream.noack()

        async def process(events: list[Any]) -> None:
            await processor.process([record for event in events for record in records_of(event.value)])

        async def ack(events: list[Any]) -> None:
            for event in events:
                await manual.ack(event)
            last_ack.set_to_current_time()

        batcher = Batcher(
            process,
            ack,
            batch_size,
            batch_within_s,
            lambda exc: on_fatal(exc, where),
            size=lambda event: len(event.value),
        )
        try:
            async for event in manual.events():
                await batcher.add(event)
            await batcher.flush()
        except asyncio.CancelledError:
            raise  # a rebalance or shutdown: unacknowledged records are simply read again
        except Exception as exc:  # noqa: BLE001 - a crashed agent must not leave a worker that looks alive
            on_fatal(exc, where)

    app.agent(topic, name=f"walstream.fanout.{ns.name}")(fanout)


def records_of(chunk: Sequence[Any]) -> list[Record]:
    """The pipeline's records of one chunk of aiokafka ConsumerRecords."""
    records = []
    for r in chunk:
        attempt, first_error = retry_history(r.headers) if r.headers else (0, None)
        records.append(Record(r.key, r.value, Origin(r.topic, r.partition, r.offset), attempt, first_error))
    return records
