"""The one composition root of a stream worker: builds the Faust app, connectors, producer and metrics."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import faust

from connectors.base import Sink
from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.kafka.producer import DurableProducer
from streams import topics
from streams.agents.fanout import Applier, Batcher, FanoutProcessor, Record
from streams.agents.retry import RetryRunner, tier_topics_of
from streams.breaker import Breaker
from streams.codec import Codec
from streams.dispatch import Dispatcher
from streams.faust_kafka import WalApp
from streams.health import HealthServer
from streams.liveness import Liveness
from streams.logs import logging_config
from streams.metrics import Metrics
from streams.model import Origin
from streams.namespaces import Namespace
from streams.payload import PayloadCodec
from streams.retry import RetrySchedule
from streams.routing import FloodGuard, Router
from streams.throttle import DeletePacer, Throttled
from streams.wiring import Connections, build_sinks, topic_specs

log = logging.getLogger(__name__)

#: The exit code of a worker that stopped itself because an outcome could not be made durable.
EXIT_NOT_DURABLE = 70


class Role(StrEnum):
    ALL = "all"  # fan-out agents and retry tiers in one process (the default)
    FANOUT = "fanout"  # only the namespaces' logs
    RETRY = "retry"  # only the retry tiers


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    group: str
    data_dir: Path
    role: Role = Role.ALL
    replication_factor: int = 1
    batch_size: int = 500
    batch_within_s: float = 0.05
    flood_hold_s: float = 30.0
    metrics_port: int | None = None  # /metrics, /healthz and /readyz; None: not served
    stall_s: float = 120.0  # unhealthy when input waits and nothing was committed for this long
    crash_grace_s: float = 15.0  # after an agent crash, report unhealthy this long, then exit
    json_logs: bool = True


def exit_now() -> None:
    sys.stderr.flush()
    os._exit(EXIT_NOT_DURABLE)


def schedule_of(ns: Namespace) -> RetrySchedule:
    return RetrySchedule(ns.tier_delays_ms(), ns.retry.backoff_multiplier, ns.retry.max_attempts)


class Worker:
    """Everything one `walstream worker` process runs: per namespace a fan-out agent and/or its retry tiers."""

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
        self.producer = DurableProducer(endpoints.kafka_bootstrap)
        self._guards = {ns.name: FloodGuard(ns.name, ns.retry.dlq_max_per_minute) for ns in self.namespaces}
        self.liveness = Liveness(
            endpoints.kafka_bootstrap,
            f"walstream.{options.group}",
            [(ns.name, topics.wal_topic(ns.name)) for ns in self.namespaces] if options.role is not Role.RETRY else [],
            metrics,
            stall_s=options.stall_s,
            paused=self.paused,
        )
        self._crashed = threading.Event()
        # One pacer per namespace and target, shared by the fan-out and the retry tiers of this process.
        self._pacers = {
            (ns.name, target): DeletePacer(ns.throttle.max_deletes_per_second)
            for ns in self.namespaces
            if ns.throttle.max_deletes_per_second
            for target in ns.targets
        }
        self.app: faust.App | None = None
        self.retry: RetryRunner | None = None
        if options.role in (Role.ALL, Role.FANOUT):
            self._build_fanout()
        if options.role in (Role.ALL, Role.RETRY):
            self.retry = RetryRunner(
                endpoints.kafka_bootstrap,
                f"walstream.{options.group}.retry",
                tier_topics_of(self.namespaces),
                self._retry_appliers,
                self.codec,
                self.fail_fast,
                options.batch_size,
                tier_ms={ns.name: ns.tier_delays_ms() for ns in self.namespaces},
            )

    def appliers(self, connections: Connections, breakers: bool = True) -> dict[str, Applier]:
        """One Applier per namespace, its sinks on ``connections`` (each event loop needs its own)."""
        built = {}
        for ns in self.namespaces:
            sinks: dict[str, Sink] = {}
            for name, sink in build_sinks(ns, connections, self.producer).items():
                wrapped: Sink = Breaker(sink) if breakers else sink
                pacer = self._pacers.get((ns.name, name))
                sinks[name] = Throttled(wrapped, pacer) if pacer else wrapped
            schedule = schedule_of(ns)
            router = Router(
                ns.name, tuple(ns.targets), schedule, self.producer, self.codec, self.metrics, self._guards[ns.name]
            )
            built[ns.name] = Applier(
                ns.name,
                Dispatcher(sinks, PayloadCodec(ns.payload).decode),
                router,
                self.producer,
                self.codec,
                self.metrics,
                schedule,
                self.options.flood_hold_s,
            )
        return built

    def _retry_appliers(self) -> tuple[Mapping[str, Applier], Callable[[], Awaitable[None]]]:
        connections = Connections(self.endpoints)
        return self.appliers(connections), connections.close

    def _build_fanout(self) -> None:
        options = self.options
        options.data_dir.mkdir(parents=True, exist_ok=True)
        self.app = WalApp(
            f"walstream.{options.group}",
            broker=f"kafka://{self.endpoints.kafka_bootstrap}",
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
        connections = Connections(self.endpoints)
        self.app.closers.append(connections.close)
        appliers = self.appliers(connections)
        for ns in self.namespaces:
            self._add_fanout(self.app, ns, appliers[ns.name])

    def _add_fanout(self, app: faust.App, ns: Namespace, applier: Applier) -> None:
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

            batcher = Batcher(process, ack, options.batch_size, options.batch_within_s, self.fail_fast)
            try:
                async for event in manual.events():
                    await batcher.add(event)
                await batcher.flush()
            except asyncio.CancelledError:
                raise  # a rebalance or shutdown: unacknowledged records are simply read again
            except Exception as exc:  # noqa: BLE001 - a crashed agent must not leave a worker that looks alive
                self.fail_fast(exc, f"fan-out agent of {ns.name}")

        app.agent(topic, name=f"walstream.fanout.{ns.name}")(fanout)

    def ensure_topics(self) -> None:
        admin = KafkaAdmin(self.endpoints.kafka_bootstrap)
        for ns in self.namespaces:
            admin.ensure_topics(topic_specs(ns))

    def fail_fast(self, exc: BaseException, where: str = "an agent") -> None:
        """A crashed agent never acks again and must not look alive: report unhealthy at once, exit after a
        grace period (long enough for a probe or a person to see why), without acknowledging anything."""
        if self._crashed.is_set():
            return
        self._crashed.set()
        self.liveness.crashed(where, exc)
        log.critical(
            "%s crashed: %s: %s; exiting in %.0fs",
            where,
            type(exc).__name__,
            exc,
            self.options.crash_grace_s,
            exc_info=exc,
        )
        threading.Timer(self.options.crash_grace_s, exit_now).start()

    def health(self) -> tuple[bool, dict[str, object]]:
        ok, details = self.liveness.status()
        retry_ok = self.retry is None or self.retry.alive
        return ok and retry_ok, {"role": self.options.role.value, "retry_thread": retry_ok, **details}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        ok, details = self.health()
        paused = [ns.name for ns in self.namespaces if self.paused(ns.name)]
        return ok and not paused, {**details, "paused_by_flood_guard": paused}

    def paused(self, namespace: str) -> bool:
        """True while the DLQ flood guard holds the namespace."""
        value = self.metrics.registry.get_sample_value("walstream_namespace_paused", {"namespace": namespace})
        return bool(value)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        logging.config.dictConfig(logging_config("INFO", self.options.json_logs))
        self.ensure_topics()
        server = None
        if self.options.metrics_port is not None:
            server = HealthServer(self.metrics, self.health, self.readiness, self.options.metrics_port).start()
            log.info("metrics and health on port %d", server.port)
        if self.retry is not None:
            self.retry.start()
        self.liveness.start()
        try:
            if self.app is None:
                return _wait_for_signal()
            worker = faust.Worker(
                self.app,
                loglevel="INFO",
                quiet=True,
                redirect_stdouts=False,
                logging_config=logging_config("INFO", self.options.json_logs),
            )
            try:
                worker.execute_from_commandline()
            except SystemExit as exc:
                return int(exc.code or 0)
            return 0
        finally:
            self.liveness.stop()
            if self.retry is not None:
                self.retry.stop()
            self.producer.close()
            if server is not None:
                server.stop()


def _wait_for_signal() -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    return 0


def _record(event: Any) -> Record:
    message = event.message
    return Record(
        key=message.key,
        value=message.value,
        origin=Origin(message.topic, message.partition, message.offset),
    )
