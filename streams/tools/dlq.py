"""Reading and replaying a namespace's dead-letter topic (`walstream dlq list|show|replay`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from connectors.endpoints import Endpoints
from connectors.kafka.consumer import MissingTopic, read_to_end
from connectors.kafka.producer import DurableProducer
from streams import topics
from streams.codec import Codec, DecodeError
from streams.model import ENTRY_ID_HEADER, DeadLetter
from streams.ports import Durable
from streams.progress import Progress


@dataclass(frozen=True, slots=True)
class Letter:
    partition: int
    offset: int
    letter: DeadLetter

    @property
    def entry_id(self) -> str:
        return self.letter.entry.entry_id if self.letter.entry else ""


@dataclass(frozen=True, slots=True)
class LetterFilter:
    error_class: str | None = None
    reason_contains: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    skip_ids: frozenset[str] = frozenset()

    def matches(self, letter: Letter) -> bool:
        d = letter.letter
        return (
            (self.error_class is None or d.error_class == self.error_class)
            and (self.reason_contains is None or self.reason_contains.lower() in d.reason.lower())
            and (self.since_ms is None or d.failed_at_ms >= self.since_ms)
            and (self.until_ms is None or d.failed_at_ms < self.until_ms)
        )


def parse_time(text: str) -> int:
    """ISO-8601 (UTC if no zone), or a relative age such as 15m, 2h, 3d; returns ms since the epoch."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return int((time.time() - int(text[:-1]) * units[text[-1]]) * 1000)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO time (2026-11-26T10:00) nor an age (15m, 2h, 3d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def read_letters(endpoints: Endpoints, namespace: str, codec: Codec | None = None) -> Iterator[Letter | str]:
    """Every record of the DLQ from the start up to its current end; a record that does not decode is a str."""
    codec = codec or Codec()
    topic = topics.dlq_topic(namespace)
    try:
        for record in read_to_end(endpoints.kafka, topic):
            try:
                yield Letter(record.partition, record.offset, codec.decode_dead_letter(record.value))
            except DecodeError as exc:
                yield f"partition {record.partition} offset {record.offset}: not a dead letter ({exc})"
    except MissingTopic as exc:
        raise ValueError(f"namespace {namespace!r} has no dead-letter topic {topic}: {exc}") from None


@dataclass
class ReplayReport:
    replayed: int = 0
    skipped: list[str] = field(default_factory=list)
    not_replayable: int = 0
    failed: int = 0

    def summary(self) -> str:
        return (
            f"replayed {self.replayed}; skipped {len(self.skipped)} by --skip; "
            f"{self.not_replayable} not replayable (undecodable: no entry); {self.failed} not durable"
        )


def replay(
    endpoints: Endpoints,
    namespace: str,
    letters: Sequence[Letter],
    skip_ids: frozenset[str],
    say: Callable[[str], None],
) -> ReplayReport:
    """Write each letter's entry back to the log with its original id and sequence (so replay is idempotent)."""
    codec = Codec()
    report = ReplayReport()
    todo = []
    for item in letters:
        if item.letter.entry is None:
            report.not_replayable += 1
        elif item.entry_id in skip_ids:
            report.skipped.append(item.entry_id)
        else:
            todo.append(item.letter.entry)
    producer = DurableProducer(endpoints.kafka)
    progress = Progress(len(todo), f"replaying into {topics.wal_topic(namespace)}")

    async def send_all() -> None:
        futures = [
            producer.send_nowait(
                topics.wal_topic(namespace),
                entry.key.encode(),
                codec.encode_entry(entry),
                headers=[(ENTRY_ID_HEADER, entry.entry_id.encode()), ("walstream-replayed", b"1")],
            )
            for entry in todo
        ]
        for delivery in await asyncio.gather(*futures):
            if delivery.durable is Durable.TRUE:
                report.replayed += 1
            else:
                report.failed += 1
            progress.advance()

    try:
        asyncio.run(send_all())
    finally:
        progress.close()
        producer.close()
    return report
