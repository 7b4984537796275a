"""The `walstream dlq` commands: list, show and replay a namespace's dead letters."""

from __future__ import annotations

import argparse
from typing import Any

from connectors.endpoints import Endpoints
from connectors.sqs.client import ENDPOINT_SETTING, SqsAccess
from streams.config import Settings, load_settings
from streams.namespaces import NamespaceError
from streams.tools.common import UsageError, endpoints, namespaces, say


def _is_sqs(settings: Settings, namespace: str) -> bool:
    """Whether the namespace (when its file is in the namespace dir) keeps its log in SQS."""
    try:
        found = namespaces(settings, None)
    except (NamespaceError, OSError):
        return False
    return namespace in found and found[namespace].backend == "sqs"


def _sqs(where: Endpoints) -> SqsAccess:
    if where.sqs is None:
        raise UsageError(f"this namespace uses backend sqs and no SQS endpoint is configured; set {ENDPOINT_SETTING}")
    return where.sqs


def dlq_selection(args: argparse.Namespace) -> tuple[Endpoints, list[Any]]:
    from streams.tools.dlq import Letter, LetterFilter, parse_time, read_letters

    settings = load_settings()
    try:
        chosen = LetterFilter(
            error_class=args.error_class,
            reason_contains=args.reason,
            since_ms=parse_time(args.since) if args.since else None,
            until_ms=parse_time(args.until) if args.until else None,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    where = endpoints(settings)
    found: list[Any] = []
    if _is_sqs(settings, args.namespace):
        from streams.tools.dlq_sqs import read_queue_letters

        return where, [i for i in read_queue_letters(_sqs(where), args.namespace) if chosen.matches(i)]
    for item in read_letters(where, args.namespace):
        if isinstance(item, Letter):
            if chosen.matches(item):
                found.append(item)
        else:
            say(item)
    return where, found


def dlq_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    _, letters = dlq_selection(args)
    print(f"{'partition:offset':<18} {'failed at (UTC)':<20} {'class':<12} {'key':<20} {'entry id':<33} reason")
    for item in letters:
        d = item.letter
        when = datetime.fromtimestamp(d.failed_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        key = d.entry.key if d.entry else "-"
        print(
            f"{item.partition}:{item.offset:<16} {when:<20} {d.error_class:<12} {key[:20]:<20} "
            f"{item.entry_id or '-':<33} {d.reason[:100]}"
        )
    say(f"{len(letters)} dead letters")
    return 0


def dlq_show(args: argparse.Namespace) -> int:
    import json

    _, letters = dlq_selection(args)
    wanted = [i for i in letters if args.id in (i.entry_id, f"{i.partition}:{i.offset}")]
    if not wanted:
        raise UsageError(f"no dead letter with entry id or partition:offset {args.id!r} in {args.namespace}")
    for item in wanted:
        d = item.letter
        entry = d.entry.to_record() if d.entry else None
        if entry is not None:
            entry["payload"] = entry["payload"].decode("utf-8", "replace")
        print(
            json.dumps(
                {
                    "partition": item.partition,
                    "offset": item.offset,
                    "error_class": d.error_class,
                    "reason": d.reason,
                    "attempts": d.attempts,
                    "pending_targets": list(d.pending_targets),
                    "failed_at_ms": d.failed_at_ms,
                    "origin": d.origin.to_record(),
                    "entry": entry,
                    "raw_hex": d.raw.hex() if d.entry is None else None,
                },
                indent=2,
                default=str,
            )
        )
    return 0


def dlq_replay(args: argparse.Namespace) -> int:
    from streams.tools.dlq import replay

    where, letters = dlq_selection(args)
    if _is_sqs(load_settings(), args.namespace):
        from streams.tools.dlq_sqs import replay_queue_letters

        report = replay_queue_letters(_sqs(where), args.namespace, letters, frozenset(args.skip), say)
    else:
        report = replay(where, args.namespace, letters, frozenset(args.skip), say)
    say(report.summary())
    return 0 if report.failed == 0 else 1
