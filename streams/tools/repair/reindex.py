"""`walstream reindex`: a new mapping for a namespace's search index while the workers keep writing.

The target's index name is an alias over one concrete generation, ``<index>-g<N>``, and the workers write through
it (a write through an alias goes to its write index). A reindex to generation N+1:

1. creates ``<index>-g<N+1>`` with the new mapping (the mapping file's fields, shards and replicas);
2. moves the writes: one ``_aliases`` call makes N+1 the alias's write index and keeps N in the alias for reads.
   From here every live write, versioned with its sequence, lands in N+1. Searches read both generations until
   step 5, so a key may be found twice meanwhile; the repair commands use the write index;
3. backfills N+1 from the primary store, each document at its row's version with ``external_gte``: a live write
   of a newer sequence that is already there refuses the older one, so the backfill never undoes a live write,
   and every write made before step 2 is in the primary store and comes over with its version;
4. verifies N+1 against the primary store (keys younger than the grace window are the workers' to write). Drift,
   for instance an entry whose search write reached N before step 2 but whose primary write landed after its
   token range was read in step 3, is repaired by another backfill pass, up to ``passes`` times;
5. swaps: one ``_aliases`` call removes N from the alias, which then reads and writes N+1 only;
6. keeps N (outside the alias) unless ``drop_old``: rolling back is pointing the alias at it again.

Nothing is lost at any step: a write goes either to N before step 2, and then to the primary store too, from
which step 3 or 4 copies it, or to N+1. Running the command again resumes: a generation that was created but not
yet given the writes is reused (same mapping), and an alias that reads two generations resumes at step 3. While
the alias reads two generations, ``rollback`` makes N the write index again, brings the writes N+1 took meanwhile
over from the primary store, and deletes N+1.

A plain index (made before generations) cannot keep its name once the alias takes it: its reindex needs
``drop_old``; it builds the generation (steps 1, 3), then one ``_aliases`` call deletes the plain index and gives
its name to the generation, and steps 3 and 4 run again to bring over what the workers wrote to the plain index
meanwhile (the primary store holds it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from elasticsearch import Elasticsearch
from pydantic import ValidationError

from connectors.elasticsearch.generations import (
    Layout,
    existing_generations,
    generation_name,
    generation_number,
    index_mappings,
    index_settings,
    layout,
)
from connectors.elasticsearch.scan import ElasticsearchReader
from connectors.endpoints import Kafka
from streams.core.drift import Kind
from streams.namespaces import CassandraTarget, ElasticsearchTarget, Namespace
from streams.tools.repair.backfill import BackfillOptions, backfill_search
from streams.tools.repair.stores import RepairError, Stores
from streams.tools.repair.verify import VerifyOptions, verify

Say = Callable[[str], None]
_MAPPING_KEYS = ("fields", "shards", "replicas")


@dataclass(frozen=True, slots=True)
class ReindexOptions:
    state_dir: Path
    drop_old: bool = False
    grace_s: float = 30.0
    passes: int = 3
    rate: float = 0.0
    ranges: int = 64
    page_size: int = 1000


def load_mapping(path: Path, ns: Namespace, primary: str, search: str) -> ElasticsearchTarget:
    """The search target with the mapping file's ``fields`` (and ``shards``, ``replicas``); RepairError names
    what is wrong with the file."""
    where = f"mapping file {path}"
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RepairError(f"{where} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RepairError(f"{where} is not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict) or "fields" not in document:
        raise RepairError(f"{where}: expected a mapping with `fields` (name: type), and optionally shards, replicas")
    unknown = sorted(set(document) - set(_MAPPING_KEYS))
    if unknown:
        raise RepairError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; it takes {', '.join(_MAPPING_KEYS)}"
        )
    current = ns.targets[search]
    assert isinstance(current, ElasticsearchTarget)
    try:
        target = ElasticsearchTarget.model_validate({**current.model_dump(), **document})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RepairError(f"{where}: {problems}") from None
    if not target.fields:
        raise RepairError(f"{where}: fields: list at least one field")
    stored = ns.targets[primary]
    assert isinstance(stored, CassandraTarget)
    unstored = [f for f in target.fields if f not in stored.column_fields().values()]
    if unstored:
        raise RepairError(
            f"{where}: field(s) {', '.join(unstored)} are not stored by {primary}, so the new generation cannot be "
            f"filled from it"
        )
    unwritten = [f for f in target.fields if f not in current.fields]
    if unwritten:
        raise RepairError(
            f"{where}: field(s) {', '.join(unwritten)} are not in targets.{search}.fields of the namespace file, and "
            f"the workers write only those: add them there and roll the workers out first, then reindex"
        )
    return target


@dataclass
class ReindexReport:
    alias: str
    old: tuple[str, ...] = ()
    new: str = ""
    rows: int = 0
    refused: int = 0
    passes: int = 0
    dropped: bool = False

    def lines(self) -> list[str]:
        out = [
            f"reindex: alias {self.alias} now reads and writes {self.new} only (was {', '.join(self.old)}); "
            f"{self.rows:,} rows backfilled in {self.passes} pass(es), {self.refused:,} refused as older than a "
            f"live write"
        ]
        if self.dropped:
            out.append(f"  deleted {', '.join(self.old)}")
        elif self.old:
            out.append(f"  kept {', '.join(self.old)} outside the alias: delete it, or run again with --drop-old")
        return out


def reindex(
    stores: Stores, kafka: Kafka, new_target: ElasticsearchTarget, options: ReindexOptions, say: Say
) -> ReindexReport:
    es = stores.es
    alias = new_target.index
    found = layout(es, alias)
    if found.kind == "absent":
        raise RepairError(f"index {alias} does not exist (`walstream namespaces apply`)")
    if found.kind == "index" and not options.drop_old:
        raise RepairError(
            f"{alias} is a plain index, made before index generations: the alias that replaces it takes its name, so "
            f"it cannot be kept; run again with --drop-old to replace it (its documents are rebuilt from the primary "
            f"store)"
        )
    old, new, writes_moved = _plan(es, found, new_target, say)
    report = ReindexReport(alias, old, new)
    fill = dataclasses.replace(stores, search=ElasticsearchReader(es, new_target, options.page_size, index=new))
    hint = f"{new} was created, the alias still reads and writes {', '.join(old)}: run the same command to resume"
    try:
        if not es.indices.exists(index=new):
            es.indices.create(
                index=new, settings=index_settings(new_target), mappings=index_mappings(new_target.fields)
            )
            say(f"step 1/5: created {new} with fields {', '.join(f'{k}:{v}' for k, v in new_target.fields.items())}")
        if found.kind == "alias" and not writes_moved:
            es.indices.update_aliases(
                actions=[
                    *({"add": {"index": o, "alias": alias, "is_write_index": False}} for o in old),
                    {"add": {"index": new, "alias": alias, "is_write_index": True}},
                ]
            )
            say(f"step 2/5: alias {alias} writes to {new} and reads {', '.join([*old, new])}")
        if found.kind == "alias":
            hint = (
                f"alias {alias} writes to {new} and reads {', '.join([*old, new])}: run the same command to resume, "
                f"or roll back with `walstream reindex {stores.ns.name} --rollback`"
            )
        _fill(fill, kafka, options, report, say, restart=False)
        if found.kind == "index":
            _swap(es, alias, old, new, plain=True)
            say(f"step 5/5: deleted the plain index {alias}; alias {alias} reads and writes {new}")
            hint = f"alias {alias} reads and writes {new}: run `walstream backfill` and `walstream verify` to finish"
            report.dropped = True
            _fill(fill, kafka, options, report, say, restart=True)
            return report
        _swap(es, alias, old, new, plain=False)
        say(f"step 5/5: alias {alias} reads and writes {new} only")
        if options.drop_old:
            es.indices.delete(index=",".join(old))
            report.dropped = True
    except Exception as exc:  # noqa: BLE001 - whatever stopped it, the message says how to resume or roll back
        raise RepairError(f"reindex stopped: {_first(exc)}; {hint}") from None
    return report


def _plan(es: Elasticsearch, found: Layout, target: ElasticsearchTarget, say: Say) -> tuple[tuple[str, ...], str, bool]:
    """The generations the alias leaves, the one it moves to, and whether the writes already moved (a resume)."""
    alias = target.index
    wanted = index_mappings(target.fields)["properties"]
    if found.switching:
        assert found.write_index is not None
        new = found.write_index
        if _properties(es, new) != wanted:
            raise RepairError(
                f"a reindex to {new} with another mapping is under way ({found.describe()}): run it again with its "
                f"mapping file, or roll it back with --rollback"
            )
        say(f"resuming: {found.describe()}")
        return tuple(i for i in found.indices if i != new), new, True
    generations = existing_generations(es, alias)
    newest = max((generation_number(alias, g) or 0 for g in generations), default=0)
    current = found.write_index or ""
    leftover = [
        g
        for g in generations
        if g not in found.indices and (generation_number(alias, g) or 0) > (generation_number(alias, current) or 0)
    ]
    if leftover:
        new = leftover[-1]
        if _properties(es, new) != wanted:
            raise RepairError(
                f"{new} is left from an earlier reindex with another mapping: delete it, or run again with that "
                f"mapping file to resume"
            )
        say(f"resuming with {new}, created by an earlier run")
        return found.indices, new, False
    return found.indices, generation_name(alias, newest + 1), False


def _properties(es: Elasticsearch, index: str) -> dict[str, Any]:
    body = es.indices.get_mapping(index=index).body[index]["mappings"]
    return dict(body.get("properties", {}))


def _fill(
    stores: Stores, kafka: Kafka, options: ReindexOptions, report: ReindexReport, say: Say, restart: bool
) -> None:
    """Backfill the new generation, then verify it; another pass while it shows drift, up to ``options.passes``."""
    state = options.state_dir / f"{stores.ns.name}.reindex-{stores.search.index}.json"
    for attempt in range(1, options.passes + 1):
        say(f"step 3/5: backfill {stores.search.index} from {stores.pair.primary} (pass {attempt})")
        filled = backfill_search(
            stores,
            kafka,
            BackfillOptions(state, rate=options.rate, ranges=options.ranges, restart=restart or attempt > 1),
            say,
        )
        report.rows += filled.rows
        report.refused += filled.writes.refused
        report.passes += 1
        if not filled.ok:
            raise RepairError("; ".join(filled.lines()))
        say(f"step 4/5: verify {stores.search.index} against {stores.pair.primary} (grace {options.grace_s:g} s)")
        checked = verify(stores, kafka, VerifyOptions(grace_s=options.grace_s, ranges=options.ranges), say)
        drift = sum(checked.tally.counts[(stores.pair.search, kind)] for kind in Kind)
        if not drift:
            return
        say("\n".join(["  drift in the new generation; another backfill pass:", *checked.lines()[1:]]))
    raise RepairError(f"{stores.search.index} still drifts from {stores.pair.primary} after {options.passes} passes")


def _swap(es: Elasticsearch, alias: str, old: Sequence[str], new: str, plain: bool) -> None:
    """One atomic ``_aliases`` call: the alias leaves the old generations (or takes the plain index's name)."""
    add = {"add": {"index": new, "alias": alias, "is_write_index": True}}
    if plain:
        es.indices.update_aliases(actions=[{"remove_index": {"index": alias}}, add])
    else:
        es.indices.update_aliases(actions=[*({"remove": {"index": o, "alias": alias}} for o in old), add])


def rollback(stores: Stores, kafka: Kafka, options: ReindexOptions, say: Say) -> str:
    """Undo a reindex that moved the writes and did not swap: the previous generation takes the writes back, the
    writes the new one took meanwhile come over from the primary store, and the new generation is deleted."""
    es = stores.es
    alias = stores.search.target.index
    found = layout(es, alias)
    if not found.switching or found.write_index is None:
        raise RepairError(f"no reindex to roll back: {found.describe()}")
    new = found.write_index
    previous = [i for i in found.indices if i != new][-1]
    es.indices.update_aliases(
        actions=[
            {"remove": {"index": new, "alias": alias}},
            {"add": {"index": previous, "alias": alias, "is_write_index": True}},
        ]
    )
    say(f"alias {alias} reads and writes {previous} again; bringing over the writes {new} took")
    back = dataclasses.replace(
        stores, search=ElasticsearchReader(es, stores.search.target, options.page_size, previous)
    )
    state = options.state_dir / f"{stores.ns.name}.rollback-{previous}.json"
    filled = backfill_search(back, kafka, BackfillOptions(state, rate=options.rate, ranges=options.ranges), say)
    if not filled.ok:
        raise RepairError(
            f"rollback: {'; '.join(filled.lines())}; {new} is kept: run `walstream backfill {stores.ns.name} "
            f"--from {stores.pair.primary} --to {stores.pair.search}`, then delete {new}"
        )
    es.indices.delete(index=new)
    return f"rolled back: alias {alias} reads and writes {previous}; deleted {new}"


def _first(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__
