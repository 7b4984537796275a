"""What `walstream status` knows of a namespace, read from Kafka itself (and the workers' /readyz): lag and its age,
the retry tiers, the dead letters of the last hour, recent change events, and the flood guard."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from connectors.kafka.positions import Committed, PositionProbe
from streams import topics
from streams.codec import Codec, DecodeError
from streams.namespaces import Namespace

#: The consumer groups of walstream's workers all start so (`walstream.<group>`, `walstream.<group>.retry`).
GROUP_PREFIX = "walstream."
#: Dead letters of the last hour read for their reasons, at most (the newest); the count is exact regardless.
MAX_LETTERS_READ = 2000
#: How many reasons a namespace shows.
TOP_REASONS = 5
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


class StatusError(RuntimeError):
    """`walstream status` cannot tell (Kafka does not answer, a namespace has no topics); the message says why."""


@dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group never committed here (it reads from the oldest retained record)
    end: int
    lag: int
    oldest_ms: int | None  # write time of the first record not applied yet


@dataclass(frozen=True, slots=True)
class Lag:
    """The fan-out group's lag on the namespace's log."""

    group: str | None  # None: no worker group has committed on the log yet
    total: int
    oldest_ms: int | None
    partitions: tuple[PartitionLag, ...]


@dataclass(frozen=True, slots=True)
class Tier:
    tier: str
    topic: str
    group: str | None
    waiting: int
    next_due_ms: int | None  # when the first waiting entry is due (the earliest head of the tier's partitions)


@dataclass(frozen=True, slots=True)
class Reason:
    error_class: str
    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class Dlq:
    retained: int  # dead letters the topic holds
    last_hour: int
    top_reasons: tuple[Reason, ...]
    reasons_read: int  # letters of the last hour read for their reasons (the newest, at most MAX_LETTERS_READ)


@dataclass(frozen=True, slots=True)
class WorkerReadiness:
    address: str
    reached: bool
    ready: bool
    held: tuple[str, ...]  # namespaces its flood guard holds
    error: str | None = None
    dependencies_down: tuple[str, ...] = ()  # Kafka or stores it cannot reach now


@dataclass(frozen=True, slots=True)
class NamespaceStatus:
    namespace: str
    at_ms: int
    lag: Lag
    tiers: tuple[Tier, ...]
    dlq: Dlq
    changes_last_minute: int
    #: True or False from the workers' /readyz; None when no worker answered or no address was given.
    flood_guard_held: bool | None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["lag"]["age_s"] = _age_s(self.at_ms, self.lag.oldest_ms)
        for tier in doc["tiers"]:
            due = tier["next_due_ms"]
            tier["next_due_in_s"] = None if due is None else round((due - self.at_ms) / 1000, 3)
        return doc


@dataclass(frozen=True, slots=True)
class Look:
    """One look at the namespaces asked for, and at the workers whose addresses were given."""

    at_ms: int
    namespaces: tuple[NamespaceStatus, ...]
    workers: tuple[WorkerReadiness, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "namespaces": [ns.to_json() for ns in self.namespaces],
            "workers": [asdict(w) for w in self.workers],
        }


def _age_s(now_ms: int, then_ms: int | None) -> float | None:
    return None if then_ms is None else round(max(now_ms - then_ms, 0) / 1000, 3)


@dataclass
class Snapshot:
    """What one look at the cluster shares between namespaces: its topics and the walstream groups' offsets."""

    topics: dict[str, list[int]]
    groups: dict[str, Committed]


def snapshot(probe: PositionProbe) -> Snapshot:
    return Snapshot(probe.topics(), probe.committed(GROUP_PREFIX))


def _reader_of(snap: Snapshot, topic: str, wanted: str | None) -> tuple[str | None, dict[int, int]]:
    """The group reading ``topic`` and its committed offsets per partition: ``wanted`` if given, else the group
    that committed the most on it (the one doing the work, if an old group also left offsets behind)."""
    if wanted is not None:
        offsets = snap.groups.get(wanted, {})
        return wanted, {p: o for (t, p), o in offsets.items() if t == topic}
    best: tuple[int, str | None, dict[int, int]] = (-1, None, {})
    for group, committed in sorted(snap.groups.items()):
        mine = {p: o for (t, p), o in committed.items() if t == topic}
        if mine and sum(mine.values()) > best[0]:
            best = (sum(mine.values()), group, mine)
    return best[1], best[2]


def _partitions(snap: Snapshot, topic: str, namespace: str) -> list[int]:
    if topic not in snap.topics:
        raise StatusError(
            f"namespace {namespace!r} has no topic {topic} in Kafka: create its topics with "
            "`walstream namespaces apply`"
        )
    return snap.topics[topic]


def _lag(probe: PositionProbe, snap: Snapshot, ns: str, group: str | None) -> Lag:
    topic = topics.wal_topic(ns)
    marks = probe.watermarks(topic, _partitions(snap, topic, ns))
    group, committed = _reader_of(snap, topic, group)
    starts = {p: max(committed.get(p, low), low) for p, (low, _high) in marks.items()}
    waiting = {p: start for p, start in starts.items() if marks[p][1] > start}
    heads = probe.heads(topic, waiting)
    rows = tuple(
        PartitionLag(
            p,
            committed.get(p),
            high,
            max(high - starts[p], 0),
            heads[p].timestamp_ms if p in heads else None,
        )
        for p, (_low, high) in sorted(marks.items())
    )
    stamps = [r.oldest_ms for r in rows if r.oldest_ms is not None]
    return Lag(group, sum(r.lag for r in rows), min(stamps) if stamps else None, rows)


def _tiers(probe: PositionProbe, snap: Snapshot, namespace: Namespace, group: str | None, codec: Codec) -> list[Tier]:
    found = []
    for tier in namespace.retry.tiers:
        topic = topics.retry_topic(namespace.name, tier)
        marks = probe.watermarks(topic, _partitions(snap, topic, namespace.name))
        reader, committed = _reader_of(snap, topic, None if group is None else f"{group}.retry")
        starts = {p: max(committed.get(p, low), low) for p, (low, _high) in marks.items()}
        waiting = {p: start for p, start in starts.items() if marks[p][1] > start}
        dues = []
        for record in probe.heads(topic, waiting).values():
            try:
                dues.append(codec.decode_retry_envelope(record.value).due_ms)
            except DecodeError:
                continue  # the tier consumer sends it to the DLQ as soon as it reads it
        total = sum(marks[p][1] - start for p, start in waiting.items())
        found.append(Tier(tier, topic, reader, total, min(dues) if dues else None))
    return found


def _dlq(probe: PositionProbe, snap: Snapshot, ns: str, now_ms: int, codec: Codec) -> Dlq:
    topic = topics.dlq_topic(ns)
    marks = probe.watermarks(topic, _partitions(snap, topic, ns))
    since = probe.offsets_at(topic, list(marks), now_ms - HOUR_MS)
    spans = {p: (high if since.get(p, -1) < 0 else max(since[p], low), high) for p, (low, high) in marks.items()}
    last_hour = sum(end - start for start, end in spans.values())
    # The newest letters of the hour, an equal share per partition, for their reasons.
    share = max(MAX_LETTERS_READ // max(len(spans), 1), 1)
    newest = {p: (max(start, end - share), end) for p, (start, end) in spans.items() if end > start}
    tally: Counter[tuple[str, str]] = Counter()
    read = 0
    for record in probe.read(topic, newest):
        read += 1
        try:
            letter = codec.decode_dead_letter(record.value)
        except DecodeError:
            tally["?", "not a dead letter record"] += 1
            continue
        tally[letter.error_class, letter.reason] += 1
    top = tuple(Reason(kind, reason, count) for (kind, reason), count in tally.most_common(TOP_REASONS))
    return Dlq(sum(high - low for low, high in marks.values()), last_hour, top, read)


def _changes(probe: PositionProbe, snap: Snapshot, ns: str, now_ms: int) -> int:
    topic = topics.cdc_topic(ns)
    marks = probe.watermarks(topic, _partitions(snap, topic, ns))
    since = probe.offsets_at(topic, list(marks), now_ms - MINUTE_MS)
    return sum(high - since[p] for p, (_low, high) in marks.items() if since.get(p, -1) >= 0)


def gather(
    probe: PositionProbe,
    snap: Snapshot,
    namespace: Namespace,
    workers: Sequence[WorkerReadiness] = (),
    group: str | None = None,
    codec: Codec | None = None,
) -> NamespaceStatus:
    """One namespace's status; ``group`` is the fan-out consumer group (`walstream.<group>`), else found."""
    codec = codec or Codec()
    now_ms = int(time.time() * 1000)
    name = namespace.name
    answered = [w for w in workers if w.reached]
    return NamespaceStatus(
        namespace=name,
        at_ms=now_ms,
        lag=_lag(probe, snap, name, group),
        tiers=tuple(_tiers(probe, snap, namespace, group, codec)),
        dlq=_dlq(probe, snap, name, now_ms, codec),
        changes_last_minute=_changes(probe, snap, name, now_ms),
        flood_guard_held=any(name in w.held for w in answered) if answered else None,
    )


def worker_url(address: str) -> str:
    base = address if "://" in address else f"http://{address}"
    return base.rstrip("/") + "/readyz"


def ask_workers(addresses: Sequence[str], timeout: float = 3.0) -> list[WorkerReadiness]:
    """Each worker's /readyz: ready or not, and the namespaces its flood guard holds (503 still has the body)."""
    found = []
    for address in addresses:
        try:
            with urllib.request.urlopen(worker_url(address), timeout=timeout) as answer:
                body = answer.read()
        except urllib.error.HTTPError as err:
            body = err.read()
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            found.append(WorkerReadiness(address, False, False, (), f"no answer: {reason}"))
            continue
        try:
            doc = json.loads(body)
            held = tuple(str(n) for n in doc.get("paused_by_flood_guard", ()))
            deps = doc.get("dependencies", {})
            down = tuple(sorted(str(n) for n, state in deps.items() if not state.get("up", True)))
            found.append(WorkerReadiness(address, True, bool(doc.get("ok")), held, None, down))
        except (ValueError, AttributeError, TypeError):
            found.append(WorkerReadiness(address, False, False, (), "its /readyz did not answer JSON"))
    return found


def look(
    probe: PositionProbe,
    namespaces: Mapping[str, Namespace],
    workers: Sequence[str],
    group: str | None = None,
) -> Look:
    """One look at every namespace asked for."""
    snap = snapshot(probe)
    readiness = ask_workers(workers)
    found = tuple(gather(probe, snap, ns, readiness, group) for ns in namespaces.values())
    return Look(int(time.time() * 1000), found, tuple(readiness))
