"""Real Elasticsearch: an index, a bulk load, and searches that find exactly what was indexed."""

from __future__ import annotations

import pytest
from elasticsearch import Elasticsearch, helpers

from connectors.endpoints import Endpoints

pytestmark = pytest.mark.integration


def test_bulk_index_then_search(endpoints: Endpoints, unique_name: str) -> None:
    es = Elasticsearch(endpoints.elasticsearch_url, request_timeout=30)
    index = f"it-{unique_name}"
    es.indices.create(
        index=index,
        settings={"number_of_shards": 1, "number_of_replicas": 0},
        mappings={"properties": {"color": {"type": "keyword"}, "size": {"type": "long"}}},
    )
    try:
        docs = [{"_index": index, "_id": str(i), "color": ["red", "blue"][i % 2], "size": i} for i in range(300)]
        ok, errors = helpers.bulk(es, docs, refresh="wait_for")
        assert (ok, errors) == (300, [])

        red = es.search(index=index, query={"term": {"color": "red"}}, size=0, track_total_hits=True)
        assert red["hits"]["total"]["value"] == 150
        big = es.search(index=index, query={"range": {"size": {"gte": 290}}}, sort=[{"size": "asc"}], size=20)
        assert [hit["_source"]["size"] for hit in big["hits"]["hits"]] == list(range(290, 300))
    finally:
        es.indices.delete(index=index)
        es.close()
