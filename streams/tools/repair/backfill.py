"""`walstream backfill`: rebuilds the search index from the primary store, at the primary's versions, resumably.

Every document is written with the row's version (its write time, the entry's sequence) and ``external_gte``: a
document the index holds at a newer version (live traffic that went on meanwhile) refuses the older one, so a
backfill never undoes a newer write. Progress is recorded after each finished token range in a small JSON state
file; a later run with the same state file starts at the first range not finished. A range where a write failed
is not recorded as finished, so a rerun writes it again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.cassandra.scan import Row, token_ranges
from connectors.elasticsearch.scan import BulkReport, Doc
from connectors.endpoints import Kafka
from streams.progress import Progress
from streams.tools.repair.stores import RepairError, Stores
from streams.tools.repair.verify import newest_in_log

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    state_file: Path
    rate: float = 0.0  # rows per second; 0: as fast as the stores take them
    ranges: int = 64
    restart: bool = False
    prune: bool = False
    max_prune: int = 100_000


@dataclass
class BackfillReport:
    rows: int = 0
    writes: BulkReport = field(default_factory=BulkReport)
    pruned: BulkReport = field(default_factory=BulkReport)
    kept: int = 0  # documents without a row that the log says belong (the primary store lost them)
    resumed_at: int = 0
    next_range: int = 0
    ranges: int = 0

    @property
    def ok(self) -> bool:
        return not self.writes.failed and not self.pruned.failed and self.next_range >= self.ranges

    def lines(self) -> list[str]:
        w = self.writes
        out = [
            f"backfill: {self.rows:,} rows read from token ranges {self.resumed_at}..{self.ranges - 1}: "
            f"{w.written:,} documents written, {w.refused:,} refused (the index holds a newer version), "
            f"{w.failed:,} failed"
        ]
        if self.pruned.written or self.pruned.refused or self.kept:
            out.append(
                f"  pruned {self.pruned.written:,} documents the primary store does not hold "
                f"({self.pruned.refused:,} refused as newer; {self.kept:,} kept: the log says the primary lost them)"
            )
        out.extend(f"  error: {e}" for e in [*w.errors, *self.pruned.errors])
        if self.next_range < self.ranges:
            out.append(f"  stopped before token range {self.next_range}; run it again to resume there")
        return out


class Pacer:
    """Holds a loop to ``rate`` items per second on average (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._started = time.monotonic()
        self._taken = 0

    def take(self, n: int) -> None:
        self._taken += n
        if self._rate > 0:
            ahead = self._started + self._taken / self._rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def load_state(path: Path, expected: dict[str, Any]) -> int:
    """The first token range not finished by an earlier run (0 without a state file)."""
    if not path.exists():
        return 0
    state = json.loads(path.read_text())
    mismatch = [k for k, v in expected.items() if state.get(k) != v]
    if mismatch:
        raise RepairError(
            f"the state file {path} belongs to another backfill "
            f"({', '.join(f'{k}={state.get(k)!r}' for k in mismatch)}): use --restart to start over, or another --state"
        )
    return int(state["next_range"])


def save_state(path: Path, expected: dict[str, Any], next_range: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({**expected, "next_range": next_range}))
    os.replace(temporary, path)  # a crash leaves the old state or the new one, never half of one


def backfill_search(stores: Stores, kafka: Kafka | None, options: BackfillOptions, say: Say) -> BackfillReport:
    """Write every row of the primary store to the search index at the row's version; with ``prune``, then delete
    documents whose key the primary store does not hold and whose newest log entry is not an upsert."""
    fields = _field_columns(stores)
    ranges = token_ranges(options.ranges)
    identity = {
        "namespace": stores.ns.name,
        "from": stores.pair.primary,
        "to": stores.pair.search,
        "ranges": len(ranges),
    }
    start = 0 if options.restart else load_state(options.state_file, identity)
    report = BackfillReport(resumed_at=start, next_range=start, ranges=len(ranges))
    if start:
        say(f"resuming at token range {start} of {len(ranges)} ({options.state_file})")
    pacer = Pacer(options.rate)
    progress = Progress(len(ranges) - start, f"backfill {stores.pair.primary} -> {stores.pair.search}")
    for token_range in ranges[start:]:
        failed_before = report.writes.failed
        for page in stores.primary.scan(token_range, with_values=True):
            pacer.take(len(page))
            report.rows += len(page)
            report.writes.add(stores.search.write([_doc(row, fields) for row in page]))
        progress.advance()
        if report.writes.failed > failed_before or report.next_range != token_range.index:
            continue  # a failed range stays the resume point
        report.next_range = token_range.index + 1
        save_state(options.state_file, identity, report.next_range)
    progress.close()
    if options.prune and report.ok:
        _prune(stores, kafka, options, pacer, report, say)
    if report.ok:
        options.state_file.unlink(missing_ok=True)  # finished: the next backfill starts from the beginning
    return report


def _field_columns(stores: Stores) -> dict[str, str]:
    """Each field of the index with the column that holds its value; every field must have one."""
    by_field = {f: c for c, f in stores.primary.target.column_fields().items()}
    lacking = [f for f in stores.search.target.fields if f not in by_field]
    if lacking:
        raise RepairError(
            f"{stores.pair.primary} does not store the field(s) {', '.join(lacking)} of {stores.pair.search}: "
            f"the index cannot be rebuilt from it (replay the log to it instead)"
        )
    return {f: by_field[f] for f in stores.search.target.fields}


def _doc(row: Row, fields: dict[str, str]) -> Doc:
    values = row.values or {}
    return Doc(row.key, row.version, {f: values.get(c) for f, c in fields.items()})


def _prune(
    stores: Stores, kafka: Kafka | None, options: BackfillOptions, pacer: Pacer, report: BackfillReport, say: Say
) -> None:
    """Delete, at their own version, documents the primary store does not hold, unless the log's newest entry for
    the key is an upsert (then the primary store lost it: replay the log to the primary store first)."""
    orphans: dict[str, int] = {}
    for page in stores.search.scan():
        held = stores.primary.versions([d.key for d in page])
        orphans.update((d.key, d.version) for d in page if d.key not in held)
        if len(orphans) >= options.max_prune:
            say(f"more than {options.max_prune:,} documents lack a row: pruning these first; run again for the rest")
            break
    if not orphans:
        return
    newest = newest_in_log(kafka, stores.ns.name, orphans, say) if kafka is not None else {}
    doomed = []
    for key, version in orphans.items():
        last = newest.get(key)
        if last is not None and not last.deleted:
            report.kept += 1
        else:
            doomed.append(Doc(key, version))
    for i in range(0, len(doomed), 1000):
        chunk = doomed[i : i + 1000]
        pacer.take(len(chunk))
        report.pruned.add(stores.search.write((), chunk))
