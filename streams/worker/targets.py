"""The sinks of a namespace's targets on driver sessions shared by the process, and `namespaces apply`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cassandra.cluster import Cluster, Session
from elasticsearch import AsyncElasticsearch

from connectors.cassandra.sink import CassandraSink, new_cluster
from connectors.elasticsearch.client import new_async_client
from connectors.elasticsearch.sink import ElasticsearchSink
from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin, TopicSpec
from connectors.kafka.sink import KafkaTopicSink
from connectors.sqs.client import ENDPOINT_SETTING, SqsAccess, SqsUnavailable, ensure_queues
from streams.namespaces import CassandraTarget, ElasticsearchTarget, Namespace
from streams.ports import Producer, Sink
from streams.topics import sqs_dlq_queue, sqs_queue

Progress = Callable[[str], None]


@dataclass
class Connections:
    """Driver sessions shared by every namespace of a process; closed once, at shutdown."""

    endpoints: Endpoints
    cluster: Cluster | None = None
    session: Session | None = None
    es: AsyncElasticsearch | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cassandra(self) -> Callable[[], Session]:
        """Connects on first call (a sink calls it off the event loop); a failed attempt is tried again next time."""
        return self._cassandra_session

    def _cassandra_session(self) -> Session:
        with self._lock:
            if self.session is None:
                cluster = new_cluster(
                    self.endpoints.cassandra_host,
                    self.endpoints.cassandra_port,
                    timeout=5,
                    security=self.endpoints.security.cassandra,
                )
                try:
                    self.session = cluster.connect()
                except BaseException:
                    cluster.shutdown()
                    raise
                self.cluster = cluster
            return self.session

    def elasticsearch(self) -> AsyncElasticsearch:
        if self.es is None:
            self.es = new_async_client(
                # Short: a target that does not answer in time is retried later, not waited for.
                self.endpoints.elasticsearch_url,
                self.endpoints.security.elasticsearch,
                request_timeout=5,
                max_retries=0,
                retry_on_timeout=False,
            )
        return self.es

    async def ping(self, dependency: str) -> None:
        """Raises unless ``dependency`` (cassandra, elasticsearch) answers a trivial request."""
        if dependency == "cassandra":
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, lambda: self._cassandra_session().execute("SELECT release_version FROM system.local", timeout=5)
            )
        elif dependency == "elasticsearch":
            await self.elasticsearch().info()

    async def close(self) -> None:
        if self.es is not None:
            await self.es.close()
            self.es = None
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = self.session = None


def build_sinks(namespace: Namespace, connections: Connections, producer: Producer | None = None) -> dict[str, Sink]:
    """One sink per target of the namespace; Kafka topic targets need ``producer``."""
    sinks: dict[str, Sink] = {}
    for name, target in namespace.targets.items():
        if isinstance(target, CassandraTarget):
            sinks[name] = CassandraSink(connections.cassandra(), name, target)
        elif isinstance(target, ElasticsearchTarget):
            sinks[name] = ElasticsearchSink(connections.elasticsearch(), name, target)
        elif producer is not None:
            sinks[name] = KafkaTopicSink(name, target.topic, producer)
    return sinks


def topic_specs(namespace: Namespace) -> list[TopicSpec]:
    """The namespace's topics (and its Kafka targets'). Retry tiers share the log's partition count so a key
    keeps its partition number."""
    logs = namespace.logs()
    retention = {"retention.ms": str(namespace.retention_ms())}
    names = [*namespace.topics(), *logs[1:]]  # a region's copies of the other regions' logs, made ahead of MM2
    specs = [TopicSpec(name, namespace.partitions, retention if name in logs else {}) for name in names]
    specs += [TopicSpec(t.topic, namespace.partitions) for t in namespace.targets_of_type("kafka").values()]
    return specs


#: Receives beyond the retry budget before the queue itself moves a message to the dead-letter queue: a message
#: that kills its worker every time still ends there.
SQS_CRASH_RECEIVES = 10


def ensure_sqs_queues(ns: Namespace, sqs: SqsAccess | None, visibility_s: int) -> dict[str, bool]:
    """The queue and dead-letter queue of an SQS namespace (queue name -> created now)."""
    if sqs is None:
        raise SqsUnavailable(
            f"namespace {ns.name} uses backend sqs and no SQS endpoint is configured; set {ENDPOINT_SETTING} "
            "(the open local stack runs one: `walstream stack up`)"
        )
    max_receives = ns.retry.max_attempts + SQS_CRASH_RECEIVES
    return ensure_queues(sqs, sqs_queue(ns.name), sqs_dlq_queue(ns.name), visibility_s, max_receives)


async def apply_namespaces(
    namespaces: Iterable[Namespace],
    endpoints: Endpoints,
    progress: Progress = lambda _m: None,
    sqs_visibility_s: int = 60,
) -> dict[str, Any]:
    """Create every topic, queue, keyspace, table and index the namespaces need. Idempotent."""
    admin = KafkaAdmin(endpoints.kafka)
    connections = Connections(endpoints)
    report: dict[str, Any] = {}
    try:
        for ns in namespaces:
            if ns.backend == "sqs":
                queues = ensure_sqs_queues(ns, endpoints.sqs, sqs_visibility_s)
                made = sum(queues.values())
                progress(f"{ns.name}: queues {', '.join(queues)} ready ({made} created, {len(queues) - made} existed)")
            specs = topic_specs(ns)
            created = admin.ensure_topics(specs)
            # A topic that existed takes the namespace's settings (the log's retention) too.
            admin.set_configs([s for s in specs if s.config and s.name not in created])
            progress(
                f"{ns.name}: topics ready ({len(created)} created, {len(specs) - len(created)} existed; "
                f"log retention {ns.retention})"
            )
            for name, sink in build_sinks(ns, connections).items():
                await sink.ensure_schema()
                progress(f"{ns.name}: target {name} ready")
            report[ns.name] = {"topics_created": created}
    finally:
        await connections.close()
    return report
