"""Hands out the endpoints of whichever stack mode is configured, and stops only what it started."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from connectors.endpoints import Endpoints
from connectors.local import versions
from connectors.local.errors import UnsupportedMode
from connectors.sqs.client import local_access
from streams.config import Settings, StackMode

Progress = Callable[[str], None]


@contextlib.contextmanager
def provision(settings: Settings, progress: Progress = lambda _m: None) -> Iterator[Endpoints]:
    """Yield endpoints for the configured mode; on exit stop whatever this call started (and nothing else)."""
    if settings.mode is StackMode.EXTERNAL:
        ext = settings.external
        host, _, port = ext.cassandra_contact.rpartition(":")
        yield Endpoints(
            ext.kafka_bootstrap,
            host,
            int(port),
            ext.elasticsearch_url,
            settings.client_security(),
            sqs=local_access(settings.sqs.endpoint, settings.sqs.region),
        )
    elif settings.mode is StackMode.LOCAL:
        from connectors.local.stack import LocalStack

        stack = LocalStack(settings.local, progress=progress)
        result = stack.up()
        try:
            yield stack.endpoints()
        finally:
            if result.started:
                LocalStack(settings.local, services=result.started, progress=progress).down()
    else:
        with _containers(progress) as endpoints:
            yield endpoints


def docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env()
        client.ping()
    except Exception:  # noqa: BLE001 - any failure means there is no usable engine
        return False
    return True


@contextlib.contextmanager
def _containers(progress: Progress) -> Iterator[Endpoints]:
    if not docker_available():
        raise UnsupportedMode(
            "WALSTREAM_STACK_MODE=testcontainers needs a Docker engine, and none answers here; "
            "use the default local mode (real servers as local processes) or external endpoints."
        )
    from testcontainers.community.cassandra import CassandraContainer
    from testcontainers.community.elasticsearch import ElasticSearchContainer
    from testcontainers.community.kafka import KafkaContainer

    with contextlib.ExitStack() as stack:
        progress("starting Kafka, Cassandra and Elasticsearch containers")
        kafka = stack.enter_context(KafkaContainer().with_kraft())
        cassandra = stack.enter_context(CassandraContainer(f"cassandra:{versions.CASSANDRA_VERSION}"))
        es = stack.enter_context(
            ElasticSearchContainer(f"docker.elastic.co/elasticsearch/elasticsearch:{versions.ELASTICSEARCH_VERSION}")
        )
        yield Endpoints(
            kafka_bootstrap=kafka.get_bootstrap_server(),
            cassandra_host=cassandra.get_container_host_ip(),
            cassandra_port=int(cassandra.get_exposed_port(9042)),
            elasticsearch_url=f"http://{es.get_container_host_ip()}:{es.get_exposed_port(9200)}",
        )
