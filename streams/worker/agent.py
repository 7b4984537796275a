"""The fan-out agent of one namespace: Faust delivers the log's records, the pipeline applies them, acks in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import faust

from streams import topics
from streams.core.routing import retry_history
from streams.metrics import Metrics
from streams.model import Origin
from streams.namespaces import Namespace
from streams.pipeline.apply import Applier, Record
from streams.pipeline.batching import Batcher
from streams.pipeline.fanout import FanoutProcessor


def add_fanout_agent(
    app: faust.App,
    ns: Namespace,
    applier: Applier,
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
        # Keys go to the same partition number as in the log (murmur2 on both sides), so the owner of a log
        # partition also owns its idempotency state, without needing the current event.
        use_partitioner=True,
    )
    processor = FanoutProcessor(applier, table)
    topic = app.topic(
        topics.wal_topic(ns.name),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=ns.partitions,
    )
    where = f"fan-out agent of {ns.name}"
    last_ack = metrics.child(metrics.last_ack, ns.name)

    async def fanout(stream: Any) -> None:
        manual = stream.noack()

        async def process(events: list[Any]) -> None:
            await processor.process([_record(e) for e in events])

        async def ack(events: list[Any]) -> None:
            for event in events:
                await manual.ack(event)
            last_ack.set_to_current_time()

        batcher = Batcher(process, ack, batch_size, batch_within_s, lambda exc: on_fatal(exc, where))
        try:
            async for event in manual.events():
                await batcher.add(event)
            await batcher.flush()
        except asyncio.CancelledError:
            raise  # a rebalance or shutdown: unacknowledged records are simply read again
        except Exception as exc:  # noqa: BLE001 - a crashed agent must not leave a worker that looks alive
            on_fatal(exc, where)

    app.agent(topic, name=f"walstream.fanout.{ns.name}")(fanout)


def _record(event: Any) -> Record:
    message = event.message
    headers = message.headers or ()
    attempt, first_error = retry_history(headers.items() if isinstance(headers, dict) else headers)
    origin = Origin(message.topic, message.partition, message.offset)
    return Record(message.key, message.value, origin, attempt, first_error)
