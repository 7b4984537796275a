"""Fixtures shared by the integration tests: driver sessions on the real Cassandra and Elasticsearch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from connectors.cassandra.sink import new_cluster
from connectors.endpoints import Endpoints


@pytest.fixture(scope="session")
def stores(endpoints: Endpoints) -> Iterator[tuple[Session, Elasticsearch]]:
    """A Cassandra session and an Elasticsearch client for checking what the workers wrote."""
    cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port)
    es = Elasticsearch(endpoints.elasticsearch_url, request_timeout=30)
    yield cluster.connect(), es
    cluster.shutdown()
    es.close()
