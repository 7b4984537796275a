"""The stores a repair command reads and writes: the namespace's primary and search targets, connected, with
errors that say which store did not answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cassandra.cluster import Cluster, NoHostAvailable, Session
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import Elasticsearch

from connectors.cassandra.scan import CassandraReader
from connectors.cassandra.sink import new_cluster
from connectors.elasticsearch.client import new_client
from connectors.elasticsearch.generations import layout
from connectors.elasticsearch.scan import ElasticsearchReader
from connectors.endpoints import Endpoints
from streams.core.drift import Pair
from streams.namespaces import CassandraTarget, ElasticsearchTarget, Namespace
from streams.tools.common import say


class RepairError(RuntimeError):
    """A repair command cannot run as asked (a store away, a missing table, a range beyond retention)."""


def pair_of(ns: Namespace, requested: Sequence[str] | None) -> Pair:
    """The primary (Cassandra) and search (Elasticsearch) targets to compare: those named, or the namespace's only
    one of each type."""
    names = list(requested) if requested else list(ns.targets)
    unknown = [n for n in names if n not in ns.targets]
    if unknown:
        raise RepairError(f"namespace {ns.name} has no target {', '.join(unknown)}; it has {', '.join(ns.targets)}")
    primary = [n for n in names if isinstance(ns.targets[n], CassandraTarget)]
    search = [n for n in names if isinstance(ns.targets[n], ElasticsearchTarget)]
    if len(primary) != 1 or len(search) != 1:
        raise RepairError(
            f"choose one Cassandra and one Elasticsearch target of {ns.name} with --targets "
            f"(Cassandra: {', '.join(primary) or 'none'}; Elasticsearch: {', '.join(search) or 'none'})"
        )
    return Pair(primary[0], search[0])


@dataclass
class Stores:
    """A connected Cassandra session and Elasticsearch client, with a reader on each chosen target."""

    ns: Namespace
    pair: Pair
    cluster: Cluster
    session: Session
    es: Elasticsearch
    primary: CassandraReader
    search: ElasticsearchReader

    def close(self) -> None:
        self.es.close()
        self.cluster.shutdown()


def open_stores(endpoints: Endpoints, ns: Namespace, pair: Pair, page_size: int = 1000) -> Stores:
    """Connect to both stores and check that the targets exist; RepairError names the store that failed."""
    where = f"{endpoints.cassandra_host}:{endpoints.cassandra_port}"
    cluster = new_cluster(
        endpoints.cassandra_host, endpoints.cassandra_port, timeout=15, security=endpoints.security.cassandra
    )
    try:
        session = cluster.connect()
    except (NoHostAvailable, OSError) as exc:
        cluster.shutdown()
        raise RepairError(f"Cassandra at {where} does not answer: {_first(exc)}") from None
    es = new_client(endpoints.elasticsearch_url, endpoints.security.elasticsearch, request_timeout=60, max_retries=2)
    try:
        stores = _readers(ns, pair, cluster, session, es, page_size, endpoints.elasticsearch_url)
    except BaseException:
        es.close()
        cluster.shutdown()
        raise
    return stores


def _readers(
    ns: Namespace, pair: Pair, cluster: Cluster, session: Session, es: Elasticsearch, page_size: int, url: str
) -> Stores:
    primary_target = ns.targets[pair.primary]
    search_target = ns.targets[pair.search]
    assert isinstance(primary_target, CassandraTarget) and isinstance(search_target, ElasticsearchTarget)
    table = session.cluster.metadata.keyspaces.get(primary_target.keyspace)
    if table is None or primary_target.table not in table.tables:
        raise RepairError(
            f"target {pair.primary}: table {primary_target.qualified} does not exist (`walstream namespaces apply`)"
        )
    try:
        found = layout(es, search_target.index)
    except (TransportConnectionError, ConnectionTimeout) as exc:
        raise RepairError(f"Elasticsearch at {url} does not answer: {_first(exc)}") from None
    if found.kind == "absent":
        raise RepairError(
            f"target {pair.search}: index {search_target.index} does not exist (`walstream namespaces apply`)"
        )
    index = search_target.index
    if found.switching:
        # A reindex moved the writes to a new generation and has not finished: read and write that generation
        # (a multi-get through an alias over several indices is refused).
        if found.write_index is None:
            raise RepairError(f"target {pair.search}: {found.describe()}, with no write index: fix the alias")
        index = found.write_index
        say(f"{found.describe()} (a reindex is under way): using {index}")
    search = ElasticsearchReader(es, search_target, page_size, index)
    return Stores(ns, pair, cluster, session, es, CassandraReader(session, primary_target, page_size), search)


def _first(exc: Any) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def check_targets(endpoints: Endpoints, ns: Namespace, names: Sequence[str]) -> None:
    """Before a command writes anything: each named store target answers and its table or index exists."""
    cassandra = [n for n in names if isinstance(ns.targets[n], CassandraTarget)]
    search = [n for n in names if isinstance(ns.targets[n], ElasticsearchTarget)]
    if cassandra:
        where = f"{endpoints.cassandra_host}:{endpoints.cassandra_port}"
        cluster = new_cluster(
            endpoints.cassandra_host, endpoints.cassandra_port, timeout=15, security=endpoints.security.cassandra
        )
        try:
            session = cluster.connect()
            for name in cassandra:
                target = ns.targets[name]
                assert isinstance(target, CassandraTarget)
                keyspace = session.cluster.metadata.keyspaces.get(target.keyspace)
                if keyspace is None or target.table not in keyspace.tables:
                    raise RepairError(f"target {name}: table {target.qualified} does not exist")
        except (NoHostAvailable, OSError) as exc:
            raise RepairError(f"Cassandra at {where} does not answer: {_first(exc)}") from None
        finally:
            cluster.shutdown()
    if search:
        url = endpoints.elasticsearch_url
        es = new_client(url, endpoints.security.elasticsearch, request_timeout=15, max_retries=1)
        try:
            for name in search:
                target = ns.targets[name]
                assert isinstance(target, ElasticsearchTarget)
                if not es.indices.exists(index=target.index):
                    raise RepairError(f"target {name}: index {target.index} does not exist")
        except (TransportConnectionError, ConnectionTimeout) as exc:
            raise RepairError(f"Elasticsearch at {url} does not answer: {_first(exc)}") from None
        finally:
            es.close()
