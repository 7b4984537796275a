"""`walstream produce`: JSON lines in, validated all before any is written, durable entries out."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TextIO

from connectors.endpoints import Endpoints
from streams.client.sdk import SyncWalWriter
from streams.model import WalEntry
from streams.namespaces import Namespace
from streams.ports import Delivery, Durable
from streams.progress import Progress

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
    writer = SyncWalWriter(endpoints.kafka, namespaces, sqs=endpoints.sqs)
    try:
        entries, report.rejected = parse_lines(writer, namespace, source)
        for error in report.rejected[:20]:
            say(error)
        if report.rejected:
            return report
        progress = Progress(len(entries), f"writing to {namespace}")
        pending: list[Future[Delivery]] = []
        for entry in entries:
            pending.append(writer.submit_entry(entry))
            if len(pending) >= 5000:
                _collect(pending, report, progress)
        _collect(pending, report, progress)
        progress.close()
    finally:
        writer.close()
    return report


def _collect(pending: list[Future[Delivery]], report: ProduceReport, progress: Progress) -> None:
    for future in pending:
        result = future.result()
        if result.durable is Durable.TRUE:
            report.written += 1
        else:
            report.failed[result.durable.value] = report.failed.get(result.durable.value, 0) + 1
        progress.advance()
    pending.clear()
