"""Writes versioned documents to one Elasticsearch index with `_bulk` and external versioning."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import AsyncElasticsearch, BadRequestError, TransportError
from elasticsearch.serializer import JsonSerializer

from connectors.elasticsearch.generations import first_generation
from streams.model import Op
from streams.namespaces.spec import ElasticsearchTarget
from streams.ports import Outcome, SinkResult, SinkWrite

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Only what the results need: the response of a large _bulk is otherwise mostly per-item metadata to parse.
_BULK_FILTER = "errors,items.*.status,items.*.error.type,items.*.error.reason"
_EXTERNAL = ',"version_type":"external"}}'
_APPLIED = SinkResult(Outcome.APPLIED)
_STALE = SinkResult(Outcome.STALE)
#: Encodes like the client's own serializer (dates, UUIDs, decimals, ...), with one reusable encoder.
_ENCODER = json.JSONEncoder(default=JsonSerializer().default, ensure_ascii=False, separators=(",", ":"))


class ElasticsearchSink:
    """Writes go to ``target.index``: an alias over the current generation (its write index) or a plain index.

    Delivery guarantee: idempotent and order-free. Index and delete both use `version_type=external` with the
    entry's sequence, so Elasticsearch itself refuses an older version; that refusal (409) counts as success."""

    def __init__(self, client: AsyncElasticsearch, name: str, target: ElasticsearchTarget) -> None:
        self.name = name
        self.target = target
        self._es = client
        self._action_head = f'{{"_index":{json.dumps(target.index)},"_id":'

    async def ensure_schema(self) -> None:
        """A new target gets generation 1 (``<index>-g1``) with the target's name as its write alias, so that
        `walstream reindex` can later move the name to a new generation. A name that exists already, an alias or
        a plain index made before generations, is left as it is: writes through either work the same."""
        t = self.target
        if await self._es.indices.exists(index=t.index):
            return
        try:
            await self._es.indices.create(**first_generation(t))
        except BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":
                raise

    async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
        results: list[SinkResult] = [_APPLIED] * len(writes)
        # The NDJSON body is written here as one string: the client sends it as it is, instead of encoding two
        # objects per write, each with a fresh JSON encoder.
        head = self._action_head
        encode = _ENCODER.encode
        lines: list[str] = []
        sent: list[int] = []  # the index of each write in the body, in order
        for index, w in enumerate(writes):
            if w.op is Op.DELETE:
                lines.append(f'{{"delete":{head}{encode(w.key)},"version":{w.sequence}{_EXTERNAL}')
            else:
                try:
                    document = encode(self._document(w.document or {}))
                except (TypeError, ValueError) as exc:
                    results[index] = SinkResult(Outcome.FATAL, f"{self.name}: {exc}")
                    continue
                lines.append(f'{{"index":{head}{encode(w.key)},"version":{w.sequence}{_EXTERNAL}')
                lines.append(document)
            sent.append(index)
        if not sent:
            return results
        lines.append("")  # the body ends with a newline
        try:
            response = await self._es.bulk(operations=cast(Any, "\n".join(lines)), filter_path=_BULK_FILTER)
        except (ConnectionTimeout, TransportConnectionError, TransportError) as exc:
            return self._all(results, sent, SinkResult(Outcome.RETRYABLE, f"{self.name}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - an unknown client error is retried, never lost
            status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
            outcome = _status_outcome(status if isinstance(status, int) else 500)
            return self._all(results, sent, SinkResult(outcome, f"{self.name}: {type(exc).__name__}: {exc}"))
        answer = response.body
        items = answer.get("items", ())
        if len(items) != len(sent):
            error = f"{self.name}: _bulk answered {len(items)} items for {len(sent)} operations"
            return self._all(results, sent, SinkResult(Outcome.RETRYABLE, error))
        if answer.get("errors") is not False:  # else every item is 200/201 (indexed) or a 404 delete: applied
            for index, item in zip(sent, items, strict=True):
                results[index] = self._item_result(item)
        return results

    @staticmethod
    def _all(results: list[SinkResult], sent: list[int], result: SinkResult) -> list[SinkResult]:
        for index in sent:
            results[index] = result
        return results

    def _document(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return {name: document.get(name) for name in self.target.fields}

    def _item_result(self, item: Mapping[str, Any]) -> SinkResult:
        ((op, body),) = item.items()
        status = int(body.get("status", 500))
        if status in (200, 201):
            return _APPLIED
        if status == 409:
            return _STALE  # a newer (or the same) version is already there
        if op == "delete" and status == 404:
            return _APPLIED  # nothing to delete; the tombstone version is still recorded
        error = body.get("error", {})
        reason = f"{self.name}: {status} {error.get('type', '')}: {error.get('reason', '')}".strip()
        return SinkResult(_status_outcome(status), reason)

    async def close(self) -> None:
        await self._es.close()


def _status_outcome(status: int) -> Outcome:
    return Outcome.RETRYABLE if status in _RETRY_STATUS or status >= 500 else Outcome.FATAL
