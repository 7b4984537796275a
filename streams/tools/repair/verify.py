"""`walstream verify`: compares a namespace's primary store and search index key by key, with versions.

How it stays bounded. Cassandra orders keys by token and Elasticsearch by shard and segment, so neither side is
merged against the other in order. Instead, each side is scanned a page at a time and each page is looked up on
the other side by key: a token range of Cassandra (driver paging, ``page_size`` rows) against one multi-get of
Elasticsearch, then a point-in-time page of Elasticsearch (``search_after``) against single-partition reads of
Cassandra. A key both stores hold is decided at once (equal versions, or the older one is stale). A key only one
store holds is kept aside, at most ``max_one_sided`` of them, and decided at the end by its newest entry in the
log (one read of the log that keeps only those keys). Memory is therefore O(page_size + max_one_sided +
examples), whatever the namespace's size: about 150 bytes per kept key, 15 MB for the default 100,000.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from connectors.endpoints import Kafka
from connectors.kafka.consumer import MissingTopic, read_to_end
from streams import topics
from streams.codec import Codec, DecodeError
from streams.core.drift import LogVersion, Tally, compare, one_sided, too_young
from streams.model import Op
from streams.progress import Progress
from streams.tools.repair.stores import Stores

Say = Callable[[str], None]
Judge = Callable[[str, int | None, int | None], None]


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    keys_from: str = "both"  # primary, search or both
    grace_s: float = 60.0
    examples: int = 5
    use_log: bool = True
    max_one_sided: int = 100_000
    ranges: int = 64


@dataclass
class VerifyReport:
    namespace: str
    tally: Tally
    scanned: dict[str, int] = field(default_factory=dict)
    young: int = 0  # keys left out because their newest version is inside the grace window
    log_keys: int = -1  # one-sided keys the log was read for (-1: the log was not read)
    undecided: int = 0  # one-sided keys beyond max_one_sided, decided with the primary store as the reference
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.tally.clean

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "in_sync": self.clean,
            "scanned": self.scanned,
            "drift": self.tally.to_json(),
            "young_keys_skipped": self.young,
            "log_checked_keys": self.log_keys,
            "undecided_keys": self.undecided,
            "seconds": round(self.seconds, 3),
        }

    def lines(self) -> list[str]:
        scanned = ", ".join(f"{target} {count:,} keys" for target, count in self.scanned.items())
        out = [f"{self.namespace}: {'in sync' if self.clean else 'DRIFT'} ({scanned}; {self.seconds:.1f} s)"]
        for (target, kind), count in sorted(self.tally.counts.items()):
            if not count:
                continue
            examples = ", ".join(
                f"{d.key} (held {d.held}, expected {d.expected})" for d in self.tally.samples[(target, kind)]
            )
            out.append(f"  {target}: {count} {kind.value}, e.g. {examples}")
        if self.young:
            out.append(f"  {self.young} keys younger than the grace window were not judged")
        if self.undecided:
            out.append(f"  {self.undecided} one-sided keys beyond --max-one-sided were judged without the log")
        return out


def verify(stores: Stores, kafka: Kafka | None, options: VerifyOptions, say: Say) -> VerifyReport:
    """Scan the stores (``options.keys_from``), decide each key, and read the log for keys only one store holds
    (``kafka`` None: the log is not read, the primary store is the reference)."""
    started = time.monotonic()
    pair = stores.pair
    tally = Tally((pair.primary, pair.search), options.examples)
    report = VerifyReport(stores.ns.name, tally)
    grace_us = int(options.grace_s * 1_000_000)
    aside: dict[str, tuple[str, int]] = {}  # one-sided key -> (the store holding it, its version there)

    def judge(key: str, primary: int | None, search: int | None) -> None:
        if too_young((primary, search), int(time.time() * 1_000_000), grace_us):
            report.young += 1
            return
        if primary is not None and search is not None:
            drift = compare(pair, key, primary, search)
            if drift is not None:
                tally.add(drift)
            return
        holder, version = (pair.primary, primary) if primary is not None else (pair.search, search)
        assert version is not None
        if len(aside) < options.max_one_sided:
            aside[key] = (holder, version)
        else:
            report.undecided += 1
            tally.add(one_sided(pair, key, holder, version, None))

    if options.keys_from in ("primary", "both"):
        report.scanned[pair.primary] = _from_primary(stores, options, judge, say)
    if options.keys_from in ("search", "both"):
        report.scanned[pair.search] = _from_search(stores, options.keys_from == "both", judge)
    newest: dict[str, LogVersion] = {}
    if aside and kafka is not None and options.use_log:
        say(f"reading the log for {len(aside):,} keys only one store holds")
        newest = newest_in_log(kafka, stores.ns.name, aside, say)
        report.log_keys = len(aside)
    now_us = int(time.time() * 1_000_000)
    for key, (holder, version) in aside.items():
        last = newest.get(key)
        if last is not None and too_young((last.sequence,), now_us, grace_us):
            report.young += 1  # a write of the key is on its way
            continue
        tally.add(one_sided(pair, key, holder, version, last))
    report.seconds = time.monotonic() - started
    return report


def _from_primary(
    stores: Stores, options: VerifyOptions, judge: Callable[[str, int | None, int | None], None], say: Say
) -> int:
    from connectors.cassandra.scan import token_ranges

    ranges = token_ranges(options.ranges)
    progress = Progress(len(ranges), f"verify {stores.pair.primary} (token ranges)")
    scanned = 0
    for token_range in ranges:
        for page in stores.primary.scan(token_range):
            held = stores.search.versions([r.key for r in page])
            for row in page:
                judge(row.key, row.version, held.get(row.key))
            scanned += len(page)
        progress.advance()
    progress.close()
    say(f"{stores.pair.primary}: {scanned:,} keys scanned")
    return scanned


def _from_search(stores: Stores, absent_only: bool, judge: Judge) -> int:
    """Scan the index; with ``absent_only`` (the primary store was scanned already) only keys the primary store
    does not hold are judged, so no key is counted twice."""
    progress = Progress(stores.search.count(), f"verify {stores.pair.search} (point in time)")
    scanned = 0
    for page in stores.search.scan():
        held = stores.primary.versions([d.key for d in page])
        for doc in page:
            primary = held.get(doc.key)
            if primary is None or not absent_only:
                judge(doc.key, primary, doc.version)
        scanned += len(page)
        progress.advance(len(page))
    progress.close()
    return scanned


def newest_in_log(kafka: Kafka, namespace: str, keys: Iterable[str], say: Say) -> dict[str, LogVersion]:
    """The newest entry of each of ``keys`` in the namespace's log, read from its start to its end as of now
    (only records of those keys are decoded)."""
    wanted = {k.encode() for k in keys}
    codec = Codec()
    newest: dict[str, LogVersion] = {}
    try:
        for record in read_to_end(kafka, topics.wal_topic(namespace)):
            if record.key not in wanted:
                continue
            try:
                entry = codec.decode_entry(record.value)
            except DecodeError:
                continue
            seen = newest.get(entry.key)
            if seen is None or entry.sequence > seen.sequence:
                newest[entry.key] = LogVersion(entry.sequence, entry.op is Op.DELETE)
    except MissingTopic:
        say(f"the log {topics.wal_topic(namespace)} does not exist: the primary store is the reference")
    return newest
