"""Real Cassandra: a keyspace, a table, and rows written and read with prepared statements."""

from __future__ import annotations

import pytest
from cassandra.concurrent import execute_concurrent_with_args

from connectors.cassandra.sink import new_cluster
from connectors.endpoints import Endpoints

pytestmark = pytest.mark.integration


def test_prepared_writes_read_back(endpoints: Endpoints, unique_name: str) -> None:
    cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port)
    session = cluster.connect()
    keyspace = unique_name
    try:
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        )
        session.execute(f"CREATE TABLE {keyspace}.items (id text PRIMARY KEY, qty int, note text)")
        insert = session.prepare(f"INSERT INTO {keyspace}.items (id, qty, note) VALUES (?, ?, ?)")
        rows = [(f"id-{i}", i, f"note {i}") for i in range(200)]
        results = execute_concurrent_with_args(session, insert, rows, concurrency=32)
        assert all(ok for ok, _ in results)

        select = session.prepare(f"SELECT id, qty, note FROM {keyspace}.items WHERE id = ?")
        assert session.execute(select, ("id-42",)).one() == ("id-42", 42, "note 42")
        count = session.execute(f"SELECT count(*) FROM {keyspace}.items").one()[0]
        assert count == 200
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        cluster.shutdown()
