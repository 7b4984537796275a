"""Index generations behind an alias: the index name of an Elasticsearch target is an alias over one concrete
index, ``<index>-g<N>``, so that `walstream reindex` can build the next generation with a new mapping and move the
alias to it while the workers keep writing through the alias.

An index created before generations existed (a plain index under the target's name) keeps working: the sink and
the repair commands address it by the same name. `walstream reindex` replaces it with a generation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from elasticsearch import Elasticsearch

from streams.namespaces.spec import ElasticsearchTarget

#: How long Elasticsearch remembers the version of a deleted document. A stale upsert that arrives later than
#: this after its delete would bring the document back, so it is set to Cassandra's default gc_grace (10 days),
#: which bounds the same risk on the primary store.
GC_DELETES = "10d"


def generation_name(alias: str, number: int) -> str:
    return f"{alias}-g{number}"


def generation_number(alias: str, index: str) -> int | None:
    """N for ``<alias>-g<N>``; None for any other name."""
    found = re.fullmatch(re.escape(alias) + r"-g([1-9][0-9]*)", index)
    return int(found.group(1)) if found else None


def index_settings(target: ElasticsearchTarget) -> dict[str, Any]:
    return {
        "number_of_shards": target.shards,
        "number_of_replicas": target.replicas,
        "index.gc_deletes": GC_DELETES,
    }


def index_mappings(fields: Mapping[str, str]) -> dict[str, Any]:
    """Only the listed fields are indexed (``dynamic: false``); anything else in a document stays in its source."""
    return {"dynamic": False, "properties": {name: {"type": kind} for name, kind in fields.items()}}


def first_generation(target: ElasticsearchTarget) -> dict[str, Any]:
    """The arguments of ``indices.create`` for a new target: generation 1, the target's name its write alias."""
    return {
        "index": generation_name(target.index, 1),
        "settings": index_settings(target),
        "mappings": index_mappings(target.fields),
        "aliases": {target.index: {"is_write_index": True}},
    }


@dataclass(frozen=True, slots=True)
class Layout:
    """What a target's name is in the cluster: nothing, a plain index, or an alias over generations."""

    name: str
    kind: Literal["absent", "index", "alias"]
    indices: tuple[str, ...] = ()  # the concrete indices the name reads, oldest generation first
    write_index: str | None = None

    @property
    def switching(self) -> bool:
        """The alias reads more than one generation: a reindex moved the writes and has not finished."""
        return self.kind == "alias" and len(self.indices) > 1

    def describe(self) -> str:
        if self.kind == "absent":
            return f"{self.name} does not exist"
        if self.kind == "index":
            return f"{self.name} is a plain index"
        return f"alias {self.name} reads {', '.join(self.indices)} and writes to {self.write_index}"


def layout(es: Elasticsearch, name: str) -> Layout:
    if es.indices.exists_alias(name=name):
        answer = es.indices.get_alias(name=name).body
        flags = {index: bool(body["aliases"][name].get("is_write_index")) for index, body in answer.items()}
        indices = tuple(sorted(flags, key=lambda i: (generation_number(name, i) or 0, i)))
        writers = [i for i, w in flags.items() if w]
        write_index = writers[0] if writers else (indices[0] if len(indices) == 1 else None)
        return Layout(name, "alias", indices, write_index)
    if es.indices.exists(index=name):
        return Layout(name, "index", (name,), name)
    return Layout(name, "absent")


def existing_generations(es: Elasticsearch, alias: str) -> list[str]:
    """Every ``<alias>-g<N>`` index, in or out of the alias (a kept old generation, a half-built new one)."""
    answer = es.indices.get(index=f"{alias}-g*", ignore_unavailable=True, allow_no_indices=True).body
    found = [i for i in answer if generation_number(alias, i) is not None]
    return sorted(found, key=lambda i: generation_number(alias, i) or 0)


def drop_target_index(es: Elasticsearch, name: str) -> None:
    """Delete a target's data whatever its layout: every generation (the alias goes with them) or a plain index."""
    indices = set(existing_generations(es, name)) | set(layout(es, name).indices)
    if indices:
        es.indices.delete(index=",".join(sorted(indices)), ignore_unavailable=True)
