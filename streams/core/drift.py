"""What drift a key shows between the primary store, the search index and the log: pure decisions, no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    MISSING = "missing"  # the target lacks a key it should hold
    EXTRA = "extra"  # the target holds a key it should not
    STALE = "stale"  # the target holds the key at an older version than it should


@dataclass(frozen=True, slots=True)
class Drift:
    """One key that one target holds wrongly: what it holds (None: absent) and what it should (None: nothing)."""

    target: str
    kind: Kind
    key: str
    held: int | None
    expected: int | None


@dataclass(frozen=True, slots=True)
class LogVersion:
    """The newest entry the log holds for a key: its sequence, and whether it deletes the key."""

    sequence: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class Pair:
    """The two targets compared: the primary store (the reference) and the search index."""

    primary: str
    search: str


def compare(pair: Pair, key: str, primary: int | None, search: int | None) -> Drift | None:
    """Both stores hold the key: the one with the older version is stale (a newer version is never wrong, it can
    only be ahead of the other). One store alone holding it is decided by :func:`one_sided`."""
    if primary is None or search is None or primary == search:
        return None
    if search < primary:
        return Drift(pair.search, Kind.STALE, key, search, primary)
    return Drift(pair.primary, Kind.STALE, key, primary, search)


def one_sided(pair: Pair, key: str, holder: str, version: int, newest: LogVersion | None) -> Drift:
    """A key only ``holder`` holds. The log decides who is wrong: a key whose newest entry is an upsert belongs in
    both stores, one whose newest entry deletes it (after the version held) belongs in neither. Without the log's
    word (not asked, or older than its retention) the primary store is the reference."""
    if holder == pair.primary:
        if newest is not None and newest.deleted and newest.sequence > version:
            return Drift(pair.primary, Kind.EXTRA, key, version, None)
        return Drift(pair.search, Kind.MISSING, key, None, version)
    if newest is not None and not newest.deleted:
        return Drift(pair.primary, Kind.MISSING, key, None, newest.sequence)
    return Drift(pair.search, Kind.EXTRA, key, version, None)


def too_young(versions: Iterable[int | None], now_us: int, grace_us: int) -> bool:
    """A key whose newest version is younger than the grace window may still be on its way to a target (in a
    batch, or a retry tier): it is not drift yet. Versions are sequences, microseconds of the write time."""
    newest = max((v for v in versions if v is not None), default=None)
    return newest is not None and newest > now_us - grace_us


@dataclass
class Tally:
    """Drift counted per target and kind, with the first ``examples`` keys of each: bounded whatever the drift."""

    targets: tuple[str, ...]
    examples: int = 5
    counts: Counter[tuple[str, Kind]] = field(default_factory=Counter)
    samples: dict[tuple[str, Kind], list[Drift]] = field(default_factory=dict)

    def add(self, drift: Drift) -> None:
        slot = (drift.target, drift.kind)
        self.counts[slot] += 1
        kept = self.samples.setdefault(slot, [])
        if len(kept) < self.examples:
            kept.append(drift)

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            target: {
                kind.value: {
                    "count": self.counts[(target, kind)],
                    "examples": [
                        {"key": d.key, "held": d.held, "expected": d.expected}
                        for d in self.samples.get((target, kind), ())
                    ],
                }
                for kind in Kind
            }
            for target in self.targets
        }
