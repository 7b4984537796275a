"""The one composition root of a `walstream worker` process: builds the Faust app, pipelines, tiers and health."""

from __future__ import annotations

import logging.config
import signal
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import faust

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.kafka.producer import DurableProducer
from streams import topics
from streams.codec import Codec
from streams.core.dependencies import Dependencies
from streams.core.flood import FloodGuard
from streams.core.throttle import DeletePacer
from streams.health import HealthServer
from streams.logs import logging_config
from streams.metrics import Metrics
from streams.namespaces import Namespace
from streams.pipeline.apply import Applier
from streams.pipeline.build import build_applier, build_router, delete_pacers
from streams.worker.agent import add_fanout_agent
from streams.worker.app import new_app
from streams.worker.health import WorkerHealth, fanout_state
from streams.worker.liveness import Liveness
from streams.worker.retry_runner import RetryRunner, tier_topics_of
from streams.worker.supervisor import Supervisor
from streams.worker.targets import Connections, build_sinks, topic_specs

log = logging.getLogger(__name__)


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
    metrics_host: str = "127.0.0.1"  # the chart sets 0.0.0.0 so the kubelet and Prometheus reach it
    stall_s: float = 120.0  # unhealthy when input waits and nothing was committed for this long
    crash_grace_s: float = 15.0  # after an agent crash, report unhealthy this long, then exit
    json_logs: bool = True


#: How long the worker's follow-up records (change events, retries, dead letters, the table's changelog) may
#: wait for Kafka before the worker gives up and exits. A broker restart or a leader election must not crash
#: the worker: nothing can be acknowledged meanwhile anyway, and the records go out once Kafka is back.
WORKER_DELIVERY_TIMEOUT_MS = 5 * 60 * 1000

#: How often a worker asks a store that is down whether it answers again.
STORE_PROBE_S = 5.0


def dependency_names(namespaces: Sequence[Namespace]) -> list[str]:
    """The systems a worker of these namespaces needs: Kafka, and every store its targets write to."""
    return sorted({"kafka"} | {t.type for ns in namespaces for t in ns.targets.values()})


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
        self.producer = DurableProducer(endpoints.kafka, {"delivery.timeout.ms": WORKER_DELIVERY_TIMEOUT_MS})
        # Shared by the fan-out and the retry tiers of this process: one flood budget and one delete pace per
        # namespace (and target).
        self._guards = {ns.name: FloodGuard(ns.name, ns.retry.dlq_max_per_minute, metrics) for ns in self.namespaces}
        self._pacers: dict[str, dict[str, DeletePacer]] = {ns.name: delete_pacers(ns) for ns in self.namespaces}
        for ns in self.namespaces:
            for target, pacer in self._pacers[ns.name].items():
                metrics.child(metrics.delete_rate, ns.name, target).set(pacer.rate)
        fanout_logs = [(ns.name, log) for ns in self.namespaces for log in ns.logs()]
        self.dependencies = Dependencies(metrics, dependency_names(self.namespaces))
        self.liveness = Liveness(
            endpoints.kafka,
            f"walstream.{options.group}",
            fanout_logs if options.role is not Role.RETRY else [],
            metrics,
            stall_s=options.stall_s,
            paused=lambda namespace: self._guards[namespace].holding,
            dependencies=self.dependencies,
        )
        self.supervisor = Supervisor(options.crash_grace_s, self.liveness.crashed)
        self.app: faust.App | None = None
        self.retry: RetryRunner | None = None
        if options.role in (Role.ALL, Role.FANOUT):
            self.app = self._build_fanout()
        if options.role in (Role.ALL, Role.RETRY):
            routers = {
                ns.name: build_router(ns, self.producer, metrics, guard=self._guards[ns.name], codec=self.codec)
                for ns in self.namespaces
            }
            self.retry = RetryRunner(
                endpoints.kafka,
                f"walstream.{options.group}.retry",
                tier_topics_of(self.namespaces),
                routers,
                self.codec,
                self.fail_fast,
                options.batch_size,
                tier_ms={ns.name: ns.tier_delays_ms() for ns in self.namespaces},
                metrics=metrics,
            )
        retry, app = self.retry, self.app
        self.health = WorkerHealth(
            options.role.value,
            self.liveness,
            self._guards,
            lambda: retry is None or retry.alive,
            (lambda: fanout_state(app)) if app is not None else (lambda: (True, {})),
            self.dependencies,
        )

    def appliers(self, connections: Connections) -> dict[str, Applier]:
        """One Applier per namespace, its sinks on ``connections``."""
        return {
            ns.name: build_applier(
                ns,
                build_sinks(ns, connections, self.producer),
                self.producer,
                self.metrics,
                guard=self._guards[ns.name],
                pacers=self._pacers[ns.name],
                codec=self.codec,
                hold_s=self.options.flood_hold_s,
                dependencies=self.dependencies,
            )
            for ns in self.namespaces
        }

    def _build_fanout(self) -> faust.App:
        options = self.options
        app = new_app(f"walstream.{options.group}", self.endpoints.kafka, options.data_dir, options.replication_factor)
        connections = Connections(self.endpoints)
        app.closers.append(connections.close)
        appliers = self.appliers(connections)
        for ns in self.namespaces:
            add_fanout_agent(
                app,
                ns,
                appliers[ns.name],
                self.producer,
                self.metrics,
                self.fail_fast,
                options.batch_size,
                options.batch_within_s,
            )
        app.on_partitions_assigned.connect(self._share_deletes)
        app.on_lost_fetch = lambda topic: self.metrics.child(self.metrics.lost_fetches, topic).inc()
        dependencies = self.dependencies

        async def probe_stores() -> None:
            """A store that went down is told up again by its next good write, or by this probe when nothing
            is written to it (so readiness does not wait for traffic)."""
            for name, entry in dependencies.state().items():
                if name != "kafka" and not entry["up"]:
                    try:
                        await connections.ping(name)
                    except Exception:  # noqa: BLE001 - still down; the outage is already told
                        continue
                    dependencies.up(name)

        app.timer(STORE_PROBE_S)(probe_stores)
        return app

    def _share_deletes(self, _sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """After a rebalance (Faust's ``on_partitions_assigned``, sent with the new assignment), each throttled
        namespace's delete pacers take this worker's share of the rate."""
        assigned: Iterable[Any] = args[0]
        self.share_deletes({(tp.topic, tp.partition) for tp in assigned})

    def share_deletes(self, assigned: set[tuple[str, int]]) -> None:
        for ns in self.namespaces:
            log_topic = topics.wal_topic(ns.name)
            owned = sum(1 for topic, _ in assigned if topic == log_topic)
            for target, pacer in self._pacers[ns.name].items():
                pacer.assign(owned, ns.partitions)
                self.metrics.child(self.metrics.delete_rate, ns.name, target).set(pacer.rate)
            if self._pacers[ns.name]:
                log.info(
                    "deletes of %s paced at %.1f/s: %d of %d partitions of the %.1f/s limit",
                    ns.name,
                    next(iter(self._pacers[ns.name].values())).rate,
                    owned,
                    ns.partitions,
                    ns.throttle.max_deletes_per_second,
                )

    def ensure_topics(self) -> None:
        admin = KafkaAdmin(self.endpoints.kafka)
        for ns in self.namespaces:
            admin.ensure_topics(topic_specs(ns))

    def fail_fast(self, exc: BaseException, where: str = "an agent") -> None:
        self.supervisor.fail_fast(exc, where)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        logging.config.dictConfig(logging_config("INFO", self.options.json_logs))
        self.ensure_topics()
        server = None
        if self.options.metrics_port is not None:
            server = HealthServer(
                self.metrics,
                self.health.health,
                self.health.readiness,
                self.options.metrics_port,
                self.options.metrics_host,
            ).start()
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
