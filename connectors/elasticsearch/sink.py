"""Writes versioned documents to one Elasticsearch index with `_bulk` and external versioning."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import AsyncElasticsearch, BadRequestError, TransportError

from connectors.base import Op, Outcome, SinkWrite, WriteResult

_INDEX = re.compile(r"^[a-z0-9][a-z0-9._-]{0,254}$")
ES_TYPES = frozenset({"keyword", "text", "long", "integer", "double", "boolean", "date"})
#: How long Elasticsearch remembers the version of a deleted document. A stale upsert that arrives later than
#: this after its delete would bring the document back, so it is set to Cassandra's default gc_grace (10 days),
#: which bounds the same risk on the primary store.
GC_DELETES = "10d"
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class ElasticsearchTarget:
    """One index: the entity key is the document `_id`, the sequence its external version."""

    name: str
    index: str
    fields: Mapping[str, str]  # payload field -> Elasticsearch type
    shards: int = 1
    replicas: int = 0

    def __post_init__(self) -> None:
        if not _INDEX.match(self.index):
            raise ValueError(f"target {self.name}: {self.index!r} is not a valid index name")
        for name, kind in self.fields.items():
            if kind not in ES_TYPES:
                raise ValueError(f"target {self.name}: field {name} has unsupported type {kind!r}")


class ElasticsearchSink:
    """Delivery guarantee: idempotent and order-free. Index and delete both use `version_type=external` with the
    entry's sequence, so Elasticsearch itself refuses an older version; that refusal (409) counts as success."""

    def __init__(self, client: AsyncElasticsearch, target: ElasticsearchTarget) -> None:
        self.name = target.name
        self.target = target
        self._es = client

    async def ensure_schema(self) -> None:
        t = self.target
        if await self._es.indices.exists(index=t.index):
            return
        try:
            await self._es.indices.create(
                index=t.index,
                settings={
                    "number_of_shards": t.shards,
                    "number_of_replicas": t.replicas,
                    "index.gc_deletes": GC_DELETES,
                },
                mappings={
                    "dynamic": False,
                    "properties": {name: {"type": kind} for name, kind in t.fields.items()},
                },
            )
        except BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":
                raise

    async def write(self, writes: Sequence[SinkWrite]) -> list[WriteResult]:
        if not writes:
            return []
        operations: list[Mapping[str, Any]] = []
        for w in writes:
            meta = {"_index": self.target.index, "_id": w.key, "version": w.sequence, "version_type": "external"}
            if w.op is Op.DELETE:
                operations.append({"delete": meta})
            else:
                operations.append({"index": meta})
                operations.append(self._document(w.document or {}))
        try:
            response = await self._es.bulk(operations=operations)
        except (ConnectionTimeout, TransportConnectionError) as exc:
            return [WriteResult(Outcome.RETRYABLE, f"{self.name}: {exc}")] * len(writes)
        except TransportError as exc:
            return [WriteResult(Outcome.RETRYABLE, f"{self.name}: {exc}")] * len(writes)
        except Exception as exc:  # noqa: BLE001 - an unknown client error is retried, never lost
            status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
            outcome = _status_outcome(status if isinstance(status, int) else 500)
            return [WriteResult(outcome, f"{self.name}: {type(exc).__name__}: {exc}")] * len(writes)
        return [self._item_result(item) for item in response["items"]]

    def _document(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return {name: document.get(name) for name in self.target.fields}

    def _item_result(self, item: Mapping[str, Any]) -> WriteResult:
        ((op, body),) = item.items()
        status = int(body.get("status", 500))
        if status in (200, 201):
            return WriteResult(Outcome.APPLIED)
        if status == 409:
            return WriteResult(Outcome.STALE)  # a newer (or the same) version is already there
        if op == "delete" and status == 404:
            return WriteResult(Outcome.APPLIED)  # nothing to delete; the tombstone version is still recorded
        error = body.get("error", {})
        reason = f"{self.name}: {status} {error.get('type', '')}: {error.get('reason', '')}".strip()
        return WriteResult(_status_outcome(status), reason)

    async def close(self) -> None:
        await self._es.close()


def _status_outcome(status: int) -> Outcome:
    return Outcome.RETRYABLE if status in _RETRY_STATUS or status >= 500 else Outcome.FATAL
