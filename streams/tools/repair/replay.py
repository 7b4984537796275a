"""`walstream replay`: re-applies the log's entries of a time range to chosen targets, through the namespace's
own versioned sinks.

Each entry is written with its sequence as the version (Cassandra ``USING TIMESTAMP``, Elasticsearch external
versioning), so an entry a target already holds, or holds a newer version of, changes nothing: replay is safe on a
live namespace. It publishes no change event: every entry of the log was announced (or found to change nothing)
by the worker that owns its key, and a replay only brings a store back to what was announced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from connectors.endpoints import Endpoints
from connectors.kafka.consumer import Consumed, MissingTopic
from connectors.kafka.timerange import PartitionSpan, read_spans, spans
from streams import topics
from streams.codec import Codec, DecodeError
from streams.core.dispatch import Dispatcher, KeyState
from streams.core.schedule import due_ms
from streams.model import WalEntry
from streams.namespaces import CassandraTarget, ElasticsearchTarget, Namespace
from streams.payload import PayloadCodec
from streams.progress import Progress
from streams.tools.repair.stores import RepairError
from streams.worker.targets import Connections, build_sinks

Say = Callable[[str], None]
#: Entries per dispatch, and how often a batch whose writes failed retryably is tried again.
BATCH = 500
ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    from_ms: int
    until_ms: int | None = None
    targets: tuple[str, ...] = ()
    allow_gap: bool = False


@dataclass
class ReplayReport:
    entries: int = 0
    written: Counter[str] = field(default_factory=Counter)  # per target: writes the target took (or held newer)
    failed: Counter[str] = field(default_factory=Counter)
    not_due: int = 0  # delayed entries whose time has not come: the worker applies them when due
    undecodable: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.failed.values())

    def lines(self, targets: Sequence[str]) -> list[str]:
        per = ", ".join(f"{t} {self.written[t]:,} written, {self.failed[t]:,} failed" for t in targets)
        out = [f"replay: {self.entries:,} entries re-applied ({per}); no change events published"]
        if self.not_due:
            out.append(f"  {self.not_due:,} delayed entries are not due yet and were left to the worker")
        if self.undecodable:
            out.append(f"  {self.undecodable:,} records did not decode (they are in the DLQ already)")
        out.extend(f"  error: {e}" for e in self.errors[:5])
        return out


def store_targets(ns: Namespace, requested: Sequence[str]) -> tuple[str, ...]:
    """The targets to replay to: those named, or every Cassandra and Elasticsearch target of the namespace."""
    stores = tuple(n for n, t in ns.targets.items() if isinstance(t, CassandraTarget | ElasticsearchTarget))
    chosen = tuple(requested) or stores
    wrong = [n for n in chosen if n not in stores]
    if wrong:
        raise RepairError(f"namespace {ns.name} has no store target {', '.join(wrong)}; it has {', '.join(stores)}")
    return chosen


def plan(endpoints: Endpoints, ns: Namespace, options: ReplayOptions, say: Say) -> list[PartitionSpan]:
    """The log's spans for the range; RepairError when retention removed records the range asks for."""
    topic = topics.wal_topic(ns.name)
    try:
        found = spans(endpoints.kafka, topic, options.from_ms, options.until_ms)
    except MissingTopic:
        raise RepairError(f"the log {topic} does not exist (`walstream namespaces apply`)") from None
    # A partition retention emptied entirely gives no time to compare with: its removed records may be in range.
    gaps = [s for s in found if s.truncated and (s.earliest_ms < 0 or s.earliest_ms > options.from_ms)]
    if gaps:
        kept = [s.earliest_ms for s in gaps if s.earliest_ms >= 0]
        since = f"start at {_iso(min(kept))}" if kept else "hold nothing any more"
        text = (
            f"the range starts before the log's retention: partition(s) {', '.join(str(s.partition) for s in gaps)} "
            f"of {topic} {since}, later than --from {_iso(options.from_ms)}; entries written before that are gone"
        )
        if not options.allow_gap:
            raise RepairError(text + " (--allow-gap replays what is left)")
        say("warning: " + text)
    return found


def replay(endpoints: Endpoints, ns: Namespace, options: ReplayOptions, say: Say) -> ReplayReport:
    chosen = store_targets(ns, options.targets)
    parts = plan(endpoints, ns, options, say)
    total = sum(s.end - s.start for s in parts)
    say(f"replaying up to {total:,} records of {topics.wal_topic(ns.name)} to {', '.join(chosen)}")
    return asyncio.run(_replay(endpoints, ns, chosen, parts, total))


async def _replay(
    endpoints: Endpoints, ns: Namespace, chosen: tuple[str, ...], parts: list[PartitionSpan], total: int
) -> ReplayReport:
    connections = Connections(endpoints)
    try:
        sinks = {name: sink for name, sink in build_sinks(ns, connections).items() if name in chosen}
        dispatcher = Dispatcher(sinks, PayloadCodec(ns.payload).decode)
        report = ReplayReport()
        progress = Progress(total, "replay")
        records = read_spans(endpoints.kafka, topics.wal_topic(ns.name), parts)
        for batch, read in _batches(records, ns.name, chosen, report):
            await _apply(dispatcher, batch, report)
            progress.advance(read)
        progress.close()
        return report
    finally:
        await connections.close()


def _batches(
    records: Iterator[Consumed], namespace: str, chosen: tuple[str, ...], report: ReplayReport
) -> Iterator[tuple[list[WalEntry], int]]:
    """Entries to apply, in batches, each cut to the chosen targets, with the number of records read for them."""
    codec = Codec()
    batch: list[WalEntry] = []
    read = 0
    now_ms = int(time.time() * 1000)
    for record in records:
        read += 1
        try:
            entry = codec.decode_entry(record.value)
        except DecodeError:
            report.undecodable += 1
            continue
        if entry.namespace != namespace:
            report.undecodable += 1
            continue
        if due_ms(entry) > now_ms:
            report.not_due += 1
            continue
        targets = tuple(t for t in entry.targets if t in chosen) if entry.targets else chosen
        if not targets:
            continue
        batch.append(dataclasses.replace(entry, targets=targets))
        if len(batch) >= BATCH:
            yield batch, read
            batch, read = [], 0
    if batch or read:
        yield batch, read


async def _apply(dispatcher: Dispatcher, batch: list[WalEntry], report: ReplayReport) -> None:
    """Dispatch the batch; a target that failed retryably is tried again (only it: the state says which targets
    took each entry), up to ATTEMPTS times."""
    report.entries += len(batch)
    state: dict[str, KeyState] = {}
    pending = batch
    for attempt in range(ATTEMPTS):
        result = await dispatcher.dispatch(pending, state)
        state = result.state
        retry = []
        for outcome in result.outcomes:
            for target in outcome.applied:
                report.written[target] += 1
            if outcome.failed and not outcome.fatal and attempt + 1 < ATTEMPTS:
                retry.append(outcome.entry)
                continue
            for target, failure in outcome.failed.items():
                report.failed[target] += 1
                if len(report.errors) < 5:
                    report.errors.append(f"{outcome.entry.key}@{outcome.entry.sequence}: {failure.error}")
        if not retry:
            return
        pending = retry
        await asyncio.sleep(0.5 * 2**attempt)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
