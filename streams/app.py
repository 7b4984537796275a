"""The one composition root of a stream worker: builds the Faust app, connectors, producer and metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.kafka.producer import DurableProducer
from streams import topics
from streams.agents.fanout import Batcher, FanoutProcessor, Record
from streams.codec import Codec
from streams.dispatch import Dispatcher
from streams.metrics import Metrics
from streams.model import Origin
from streams.namespaces import Namespace
from streams.payload import PayloadCodec
from streams.wiring import Connections, build_sinks, topic_specs

log = logging.getLogger(__name__)

#: The exit code of a worker that stopped itself because an outcome could not be made durable.
EXIT_NOT_DURABLE = 70


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    group: str
    data_dir: Path
    replication_factor: int = 1
    batch_size: int = 500
    batch_within_s: float = 0.05


def fail_fast(exc: BaseException) -> None:
    """An agent that cannot make its outcome durable must not look alive: log, then exit without acking."""
    log.critical("stopping the worker: %s: %s", type(exc).__name__, exc, exc_info=exc)
    sys.stderr.flush()
    os._exit(EXIT_NOT_DURABLE)


class Worker:
    """Everything one `walstream worker` process runs: an agent per namespace, sharing connectors."""

    def __init__(
        self, endpoints: Endpoints, namespaces: Sequence[Namespace], options: WorkerOptions, metrics: Metrics
    ) -> None:
        if not namespaces:
            raise ValueError("a worker needs at least one namespace")
        self.endpoints = endpoints
        self.namespaces = list(namespaces)
        self.options = options
        self.metrics = metrics
        self.codec = Codec()
        self.connections = Connections(endpoints)
        self.producer = DurableProducer(endpoints.kafka_bootstrap)
        options.data_dir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            f"walstream.{options.group}",
            broker=f"kafka://{endpoints.kafka_bootstrap}",
            store="memory://",
            autodiscover=False,
            web_enabled=False,
            datadir=str(options.data_dir),
            topic_replication_factor=options.replication_factor,
            topic_allow_declare=True,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            key_serializer="raw",
            value_serializer="raw",
            stream_wait_empty=False,
            broker_commit_every=options.batch_size * 4,
        )
        for ns in self.namespaces:
            self._add_namespace(ns)

    def _add_namespace(self, ns: Namespace) -> None:
        payload = PayloadCodec(ns.payload)
        dispatcher = Dispatcher(build_sinks(ns, self.connections), payload.decode)
        table = self.app.Table(
            f"applied-{ns.name}",
            default=None,
            partitions=ns.partitions,
            key_type=bytes,  # raw keys; values are JSON (KeyState.to_json)
            # Keys go to the same partition number as in the log (murmur2 on both sides), so the owner of a log
            # partition also owns its idempotency state, without needing the current event.
            use_partitioner=True,
        )
        processor = FanoutProcessor(ns.name, dispatcher, table, self.producer, self.codec, self.metrics)
        topic = self.app.topic(
            topics.wal_topic(ns.name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=ns.partitions,
        )
        options = self.options
        metrics = self.metrics

        async def fanout(stream: Any) -> None:
            manual = stream.noack()

            async def process(events: list[Any]) -> None:
                await processor.process([_record(e) for e in events])

            async def ack(events: list[Any]) -> None:
                for event in events:
                    await manual.ack(event)
                metrics.last_ack.labels(ns.name).set_to_current_time()

            batcher = Batcher(process, ack, options.batch_size, options.batch_within_s, fail_fast)
            try:
                async for event in manual.events():
                    await batcher.add(event)
                await batcher.flush()
            except asyncio.CancelledError:
                raise  # a rebalance or shutdown: unacknowledged records are simply read again
            except Exception as exc:  # noqa: BLE001 - a crashed agent must not leave a worker that looks alive
                fail_fast(exc)

        self.app.agent(topic, name=f"walstream.fanout.{ns.name}")(fanout)

    def ensure_topics(self) -> None:
        admin = KafkaAdmin(self.endpoints.kafka_bootstrap)
        for ns in self.namespaces:
            admin.ensure_topics(topic_specs(ns))

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self.ensure_topics()
        worker = faust.Worker(self.app, loglevel="INFO", quiet=True, redirect_stdouts=False)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            self.producer.close()
        return 0


def _record(event: Any) -> Record:
    message = event.message
    return Record(
        key=message.key,
        value=message.value,
        origin=Origin(message.topic, message.partition, message.offset),
    )
