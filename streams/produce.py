"""Command-line producing and CDC tailing: JSON lines in, durable entries out; change events out as JSON lines."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError

from connectors.endpoints import Endpoints
from connectors.kafka.producer import Durable
from streams import topics
from streams.codec import Codec, DecodeError
from streams.model import WalEntry
from streams.namespaces import Namespace
from streams.progress import Progress
from streams.sdk import SyncWalWriter, WriteResult

_FIELDS = {"key", "op", "payload", "targets", "idempotency_key", "sequence", "delay_ms", "jitter_ms", "headers"}


@dataclass
class ProduceReport:
    written: int = 0
    rejected: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.failed

    def summary(self) -> str:
        parts = [f"{self.written} entries durable"]
        if self.failed:
            parts.append("not durable: " + ", ".join(f"{k} {v}" for k, v in self.failed.items()))
        if self.rejected:
            parts.append(f"{len(self.rejected)} lines rejected, nothing written")
        return "; ".join(parts)


def parse_lines(writer: SyncWalWriter, namespace: str, lines: Iterable[str]) -> tuple[list[WalEntry], list[str]]:
    """Every line becomes an entry, or an error naming the line and the problem."""
    entries, errors = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("a line must be a JSON object")
            unknown = set(doc) - _FIELDS
            if unknown:
                raise ValueError(
                    f"unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_FIELDS))}"
                )
            if "key" not in doc:
                raise ValueError("missing field 'key'")
            options = {k: v for k, v in doc.items() if k not in {"key", "op", "payload"}}
            if "targets" in options:
                options["targets"] = tuple(options["targets"])
            entries.append(
                writer.prepare(namespace, str(doc["key"]), doc.get("op", "UPSERT"), doc.get("payload"), **options)
            )
        except (ValueError, TypeError) as exc:
            errors.append(f"line {number}: {exc}")
    return entries, errors


def produce_lines(
    endpoints: Endpoints,
    namespaces: Mapping[str, Namespace],
    namespace: str,
    source: TextIO,
    say: Callable[[str], None],
) -> ProduceReport:
    """All lines are validated before any is written: a bad file writes nothing."""
    report = ProduceReport()
    writer = SyncWalWriter(endpoints.kafka_bootstrap, namespaces)
    try:
        entries, report.rejected = parse_lines(writer, namespace, source)
        for error in report.rejected[:20]:
            say(error)
        if report.rejected:
            return report
        progress = Progress(len(entries), f"writing to {namespace}")
        pending: list[Future[WriteResult]] = []
        for entry in entries:
            pending.append(writer.submit_entry(entry))
            if len(pending) >= 5000:
                _collect(pending, report, progress)
        _collect(pending, report, progress)
        progress.close()
    finally:
        writer.close()
    return report


def _collect(pending: list[Future[WriteResult]], report: ProduceReport, progress: Progress) -> None:
    for future in pending:
        result = future.result()
        if result.durable is Durable.TRUE:
            report.written += 1
        else:
            report.failed[result.durable.value] = report.failed.get(result.durable.value, 0) + 1
        progress.advance()
    pending.clear()


def change_event_json(codec: Codec, value: bytes) -> dict[str, Any]:
    event = codec.decode_change_event(value)
    after: Any = None
    if event.after is not None:
        try:
            after = json.loads(event.after)
        except ValueError:
            after = event.after.hex()
    return {
        "op": event.op.value,
        "key": event.key,
        "after": after,
        "source": {
            "namespace": event.source.namespace,
            "partition": event.source.partition,
            "offset": event.source.offset,
            "sequence": event.source.sequence,
            "entry_id": event.source.entry_id,
        },
        "ts_ms": event.ts_ms,
    }


def read_cdc(
    endpoints: Endpoints, namespace: str, max_events: int, idle_timeout: float, from_beginning: bool
) -> Iterable[dict[str, Any]]:
    codec = Codec()
    consumer = Consumer(
        {
            "bootstrap.servers": endpoints.kafka_bootstrap,
            "group.id": f"walstream-cdc-tail-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topics.cdc_topic(namespace)])
    seen = 0
    idle_since = time.monotonic()
    try:
        while not max_events or seen < max_events:
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout and time.monotonic() - idle_since > idle_timeout:
                    return
                continue
            idle_since = time.monotonic()
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"reading {topics.cdc_topic(namespace)}: {error}")
            try:
                yield change_event_json(codec, msg.value() or b"")
            except DecodeError as exc:
                yield {"undecodable": str(exc), "partition": msg.partition(), "offset": msg.offset()}
            seen += 1
    finally:
        consumer.close()


def tail_cdc(endpoints: Endpoints, namespace: str, max_events: int, idle_timeout: float, from_beginning: bool) -> None:
    for event in read_cdc(endpoints, namespace, max_events, idle_timeout, from_beginning):
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
