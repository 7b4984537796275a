"""Real sinks converge to last-writer-wins whatever the order, duplication or mix of upserts and deletes."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cassandra.cluster import Session
from elasticsearch import AsyncElasticsearch, Elasticsearch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.cassandra.sink import CassandraSink, new_cluster
from connectors.elasticsearch.generations import drop_target_index
from connectors.elasticsearch.sink import ElasticsearchSink
from connectors.endpoints import Endpoints
from streams.model import Op
from streams.namespaces.spec import CassandraTarget, ElasticsearchTarget
from streams.ports import Outcome, SinkWrite

pytestmark = pytest.mark.integration


@dataclass
class Sinks:
    cassandra: CassandraSink
    elasticsearch: ElasticsearchSink
    session: Session
    es: Elasticsearch
    ctarget: CassandraTarget
    etarget: ElasticsearchTarget


@pytest.fixture(scope="module")
def sinks(endpoints: Endpoints) -> Iterator[Sinks]:
    suffix = random.randbytes(5).hex()
    ctarget = CassandraTarget.model_validate(
        {
            "type": "cassandra",
            "keyspace": f"conv_{suffix}",
            "table": "items",
            "key_column": "id",
            "columns": {"color": {"type": "text"}, "qty": {"type": "bigint"}},
        }
    )
    etarget = ElasticsearchTarget.model_validate(
        {"type": "elasticsearch", "index": f"conv-{suffix}", "fields": {"color": "keyword", "qty": "long"}}
    )
    cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port)
    session = cluster.connect()
    es_sync = Elasticsearch(endpoints.elasticsearch_url)
    loop = asyncio.new_event_loop()
    es_async = AsyncElasticsearch(endpoints.elasticsearch_url)
    built = Sinks(
        CassandraSink(session, "primary", ctarget),
        ElasticsearchSink(es_async, "search", etarget),
        session,
        es_sync,
        ctarget,
        etarget,
    )
    loop.run_until_complete(built.cassandra.ensure_schema())
    loop.run_until_complete(built.elasticsearch.ensure_schema())
    built.loop = loop  # type: ignore[attr-defined]
    yield built
    session.execute(f"DROP KEYSPACE IF EXISTS {ctarget.keyspace}")
    drop_target_index(es_sync, etarget.index)
    loop.run_until_complete(es_async.close())
    loop.close()
    cluster.shutdown()
    es_sync.close()


def _run(sinks: Sinks, writes: list[SinkWrite]) -> tuple[list[Outcome], list[Outcome]]:
    async def both() -> tuple[list[Outcome], list[Outcome]]:
        c, e = await asyncio.gather(sinks.cassandra.write(writes), sinks.elasticsearch.write(writes))
        return [r.outcome for r in c], [r.outcome for r in e]

    return sinks.loop.run_until_complete(both())  # type: ignore[attr-defined]


def _state(sinks: Sinks, keys: list[str]) -> tuple[dict[str, tuple[str, int]], dict[str, tuple[str, int]]]:
    t = sinks.ctarget
    select = sinks.session.prepare(f"SELECT id, color, qty FROM {t.qualified} WHERE id IN ?")
    rows = {r.id: (r.color, r.qty) for r in sinks.session.execute(select, (keys,))}
    docs = sinks.es.mget(index=sinks.etarget.index, ids=keys, realtime=True)["docs"]
    found = {d["_id"]: (d["_source"]["color"], d["_source"]["qty"]) for d in docs if d.get("found")}
    return rows, found


def test_a_stale_upsert_after_a_delete_does_not_bring_the_key_back(sinks: Sinks) -> None:
    key = f"k-{random.randbytes(4).hex()}"
    upsert = SinkWrite(key, Op.UPSERT, 100, {"color": "red", "qty": 1})
    delete = SinkWrite(key, Op.DELETE, 200, None)
    assert _run(sinks, [upsert]) == ([Outcome.APPLIED], [Outcome.APPLIED])
    assert _run(sinks, [delete]) == ([Outcome.APPLIED], [Outcome.APPLIED])
    stale = SinkWrite(key, Op.UPSERT, 150, {"color": "blue", "qty": 2})
    c, e = _run(sinks, [stale])
    assert c == [Outcome.APPLIED]  # Cassandra cannot tell; its timestamp still keeps the delete
    assert e == [Outcome.STALE]
    assert _state(sinks, [key]) == ({}, {})


def test_a_delete_of_an_unknown_key_still_fences_older_upserts(sinks: Sinks) -> None:
    key = f"k-{random.randbytes(4).hex()}"
    _run(sinks, [SinkWrite(key, Op.DELETE, 500, None)])
    _run(sinks, [SinkWrite(key, Op.UPSERT, 400, {"color": "red", "qty": 1})])
    assert _state(sinks, [key]) == ({}, {})


def test_a_bad_field_type_is_fatal_not_retried(sinks: Sinks) -> None:
    key = f"k-{random.randbytes(4).hex()}"
    c, e = _run(sinks, [SinkWrite(key, Op.UPSERT, 1, {"color": "red", "qty": "many"})])
    assert c == [Outcome.FATAL]
    assert e == [Outcome.FATAL]


_ops = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([Op.UPSERT, Op.DELETE]),
        st.sampled_from(["red", "green", "blue"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=_ops, seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 8))
def test_random_interleavings_converge_to_last_writer_wins(
    sinks: Sinks, history: list[tuple[str, Op, str]], seed: int, batch: int
) -> None:
    rnd = random.Random(seed)
    prefix = uuid.uuid4().hex[:10]  # not `random`: hypothesis seeds it per example
    # The history as written: each op gets an increasing sequence (its write time).
    writes = [
        SinkWrite(f"{prefix}-{key}", op, seq, None if op is Op.DELETE else {"color": color, "qty": seq})
        for seq, (key, op, color) in enumerate(history, start=1)
    ]
    model: dict[str, tuple[str, int] | None] = {}
    for w in writes:
        model[w.key] = None if w.op is Op.DELETE else (w.document["color"], w.document["qty"])  # type: ignore[index]
    expected = {k: v for k, v in model.items() if v is not None}
    # Delivered with duplicates and out of order, in batches of random size.
    delivered = writes + [rnd.choice(writes) for _ in range(len(writes) // 2)]
    rnd.shuffle(delivered)
    for start in range(0, len(delivered), batch):
        c, e = _run(sinks, delivered[start : start + batch])
        assert all(o.ok for o in c + e), (c, e)
    rows, docs = _state(sinks, list(model))
    assert rows == expected
    assert docs == expected
