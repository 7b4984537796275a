"""Reads an Elasticsearch target's documents with their versions (point-in-time search, multi-get) and writes
documents back at a given version for repairs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from elasticsearch import Elasticsearch, NotFoundError

from streams.namespaces.spec import ElasticsearchTarget

#: Repairs write with ``external_gte``: a write at the version the index already holds is accepted (it puts back
#: the same version, for example over a tombstone of that version), and a newer version always wins.
REPAIR_VERSION_TYPE = "external_gte"


@dataclass(frozen=True, slots=True)
class Doc:
    """One document: its id (the entity key), its ``_version`` (the sequence written with external versioning)
    and, when asked for, its source."""

    key: str
    version: int
    source: dict[str, Any] | None = None


@dataclass
class BulkReport:
    """What a repair's ``_bulk`` did: written, refused because the index holds a newer version, failed."""

    written: int = 0
    refused: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: BulkReport) -> None:
        self.written += other.written
        self.refused += other.refused
        self.failed += other.failed
        self.errors.extend(other.errors[: max(0, 5 - len(self.errors))])


class ElasticsearchReader:
    """Scans and looks up one index. Memory: one page of documents at a time (``page_size``).

    ``index`` is the target's name (an alias over one generation, or a plain index) unless another is given: a
    concrete generation while a reindex builds it or while the alias reads two of them."""

    def __init__(
        self, client: Elasticsearch, target: ElasticsearchTarget, page_size: int = 1000, index: str | None = None
    ) -> None:
        self.target = target
        self.index = index or target.index
        self._es = client
        self._page_size = page_size

    def exists(self) -> bool:
        return bool(self._es.indices.exists(index=self.index))

    def count(self) -> int:
        self._es.indices.refresh(index=self.index)
        return int(self._es.count(index=self.index)["count"])

    def scan(self, with_source: bool = False, keep_alive: str = "5m") -> Iterator[list[Doc]]:
        """Every document, a page at a time, from a point in time (a consistent view of the index as of the call)
        sorted by ``_shard_doc``, the point in time's own tiebreaker: cheap, and needs no field data on ``_id``."""
        self._es.indices.refresh(index=self.index)
        pit = self._es.open_point_in_time(index=self.index, keep_alive=keep_alive)["id"]
        after: list[Any] | None = None
        try:
            while True:
                response = self._es.search(
                    pit={"id": pit, "keep_alive": keep_alive},
                    size=self._page_size,
                    sort=[{"_shard_doc": "asc"}],
                    search_after=after,
                    version=True,
                    source={"includes": list(self.target.fields)} if with_source else False,
                    track_total_hits=False,
                )
                pit = response.get("pit_id", pit)
                hits = response["hits"]["hits"]
                if not hits:
                    return
                yield [Doc(h["_id"], int(h["_version"]), h.get("_source") if with_source else None) for h in hits]
                after = hits[-1]["sort"]
        finally:
            with contextlib.suppress(NotFoundError):
                self._es.close_point_in_time(id=pit)

    def versions(self, keys: Sequence[str]) -> dict[str, int]:
        """The version of each key the index holds (absent keys are left out), with one real-time multi-get."""
        if not keys:
            return {}
        response = self._es.mget(index=self.index, ids=list(keys), source=False)
        return {d["_id"]: int(d["_version"]) for d in response["docs"] if d.get("found")}

    def write(self, docs: Sequence[Doc], deletes: Sequence[Doc] = ()) -> BulkReport:
        """Index ``docs`` and delete ``deletes``, each at its own version (``external_gte``)."""
        lines: list[str] = []
        for d in docs:
            lines.append(json.dumps({"index": self._action(d)}))
            lines.append(json.dumps(self._document(d.source or {}), default=str))
        for d in deletes:
            lines.append(json.dumps({"delete": self._action(d)}))
        report = BulkReport()
        if not lines:
            return report
        lines.append("")
        answer = self._es.bulk(operations=cast(Any, "\n".join(lines)), filter_path="items.*.status,items.*.error")
        for item in answer.get("items", ()):
            ((op, body),) = item.items()
            status = int(body.get("status", 500))
            if status in (200, 201) or (op == "delete" and status == 404):
                report.written += 1
            elif status == 409:
                report.refused += 1
            else:
                report.failed += 1
                if len(report.errors) < 5:
                    report.errors.append(f"{status}: {body.get('error')}")
        return report

    def _action(self, d: Doc) -> dict[str, Any]:
        return {"_index": self.index, "_id": d.key, "version": d.version, "version_type": REPAIR_VERSION_TYPE}

    def _document(self, source: Mapping[str, Any]) -> dict[str, Any]:
        return {name: source.get(name) for name in self.target.fields}
