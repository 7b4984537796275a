"""The `walstream status` command: its arguments, one screen per namespace (rich), `--watch` and `--json`."""

from __future__ import annotations

import argparse
import itertools
import json
import logging.config
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streams.config import load_settings, parse_addresses
from streams.tools.common import UsageError, endpoints, namespaces, say
from streams.tools.status import Look, NamespaceStatus, StatusError, look

if TYPE_CHECKING:  # rich is imported when the command runs, so the other commands start without it
    from rich.console import RenderableType
    from rich.panel import Panel

#: Exit code when status cannot be told (Kafka does not answer, a namespace has no topics), as the other commands.
ERROR = 2


def add_parser(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="lag, retry tiers, dead letters, change events and the flood guard of namespaces, read from Kafka",
        description=(
            "One screen per namespace, read from Kafka itself: the workers' lag per partition and its age (the "
            "write time of the oldest entry not applied yet), entries waiting per retry tier and when the next "
            "is due, dead letters of the last hour and their top reasons, change events of the last minute, and "
            "whether the flood guard holds the namespace (asked of the workers' /readyz, when their addresses "
            "are given with --workers or WALSTREAM_STATUS_WORKERS)."
        ),
    )
    status.add_argument("namespaces", nargs="*", metavar="NS", help="namespaces to show (default: all)")
    status.add_argument("--watch", action="store_true", help="redraw in place every --interval seconds")
    status.add_argument("--interval", type=float, default=3.0, help="seconds between looks with --watch (default 3)")
    status.add_argument("--json", action="store_true", help="JSON (with --watch: one JSON line per look)")
    status.add_argument(
        "--workers",
        help="comma-separated /readyz addresses of the workers, host:port (default WALSTREAM_STATUS_WORKERS)",
    )
    status.add_argument(
        "--group",
        help="the worker group whose lag to show (walstream.<group>; default: the group that committed the most)",
    )
    status.set_defaults(handler=status_command)


def status_command(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaError, KafkaException

    from connectors.kafka.positions import PositionProbe
    from streams.logs import logging_config

    # The Kafka client's own lines go to stderr as JSON, warnings and up; the screen or the JSON goes to stdout.
    logging.config.dictConfig(logging_config("WARNING", json_lines=True))
    if args.interval <= 0:
        raise UsageError("--interval must be a positive number of seconds")
    settings = load_settings()
    try:
        workers = parse_addresses(args.workers) if args.workers is not None else settings.runtime.status_workers
    except ValueError as exc:
        raise UsageError(f"--workers: {exc}") from None
    known = namespaces(settings, None)
    unknown = [n for n in args.namespaces if n not in known]
    if unknown:
        raise UsageError(
            f"unknown namespace(s) {', '.join(unknown)}; {settings.runtime.namespace_dir} has "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    if not known:
        raise UsageError(f"no namespaces in {settings.runtime.namespace_dir} (WALSTREAM_NAMESPACE_DIR)")
    chosen = {n: known[n] for n in (args.namespaces or sorted(known))}
    queued = sorted(n for n, ns in chosen.items() if ns.backend == "sqs")
    if queued:
        note = f"namespace(s) {', '.join(queued)} use backend sqs: walstream status reads Kafka logs only"
        if len(queued) == len(chosen):
            raise UsageError(note + " (an SQS queue's depth: its ApproximateNumberOfMessages attributes)")
        say(note + "; left out")
        chosen = {n: ns for n, ns in chosen.items() if n not in queued}
    where = endpoints(settings)
    group = f"walstream.{args.group}" if args.group else None
    probes = [PositionProbe(where.kafka)]

    def one_look() -> Look:
        try:
            return look(probes[0], chosen, workers, group)
        except (KafkaException, TimeoutError) as exc:
            # A fresh client for the next look: after a broker restart an old one may keep its stale metadata.
            probes[0].close()
            probes[0] = PositionProbe(where.kafka)
            error: Any = exc.args[0] if exc.args else exc
            why = error.str() if isinstance(error, KafkaError) else str(exc) or "timed out"
            raise StatusError(f"Kafka at {where.kafka_bootstrap} does not answer: {why}") from None

    try:
        if args.watch:
            return _watch(one_look, args.interval, args.json)
        found = one_look()
        if args.json:
            print(json.dumps(found.to_json(), indent=2))
        else:
            from rich.console import Console

            Console().print(render(found))
        return 0
    except StatusError as exc:
        say(f"walstream: error: {exc}")
        return ERROR
    finally:
        probes[0].close()


def _watch(one_look: Any, interval: float, as_json: bool) -> int:
    """Look again every ``interval`` seconds until interrupted (Ctrl-C); a look that fails says why, and the next
    one tries again. On a terminal the screen is redrawn in place; otherwise each look is printed after the last."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    console = Console()
    looks = itertools.count(1)

    def frame() -> RenderableType | None:
        number = next(looks)
        try:
            found = one_look()
        except StatusError as exc:
            if as_json:
                say(f"walstream: {exc}; trying again in {interval:g}s")
                return None
            header = f"walstream status  #{number}  {_clock(time.time())}"
            return Text(f"{header}\n{exc}; trying again in {interval:g}s", style="bold red")
        if as_json:
            print(json.dumps(found.to_json()), flush=True)
            return None
        header = f"walstream status  #{number}  {_clock(found.at_ms / 1000)}  every {interval:g}s  (Ctrl-C stops)"
        return Group(Text(header), render(found))

    try:
        if as_json or not console.is_terminal:
            while True:
                shown = frame()
                if shown is not None:
                    console.print(shown)
                time.sleep(interval)
        with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
            while True:
                live.update(frame() or Text(""), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """A short human duration: 4s, 2m 14s, 3h 05m, 2d 04h."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def render(found: Look) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    panels: list[RenderableType] = [_namespace(ns) for ns in found.namespaces]
    if found.workers:
        lines = [
            f"{w.address}: "
            + (("ready" if w.ready else "not ready") if w.reached else w.error or "no answer")
            + (f", flood guard holds {', '.join(w.held)}" if w.held else "")
            + (f", {', '.join(w.dependencies_down)} down" if w.dependencies_down else "")
            for w in found.workers
        ]
        panels.append(Text("workers  " + "; ".join(lines)))
    return Group(*panels)


def _namespace(ns: NamespaceStatus) -> Panel:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    now = ns.at_ms
    lag = ns.lag
    age = "" if lag.oldest_ms is None else f", oldest written {duration((now - lag.oldest_ms) / 1000)} ago"
    group = lag.group or "no worker group has committed yet"
    if ns.flood_guard_held is None:
        flood = Text("flood guard: unknown (no worker answered; --workers)", style="dim")
    elif ns.flood_guard_held:
        flood = Text("flood guard: HOLDING the namespace (too many dead letters per minute)", style="bold red")
    else:
        flood = Text("flood guard: not holding", style="green")
    summary = Text(f"lag {lag.total:,} entries{age}  (group {group})", style="bold yellow" if lag.total else "bold")

    partitions = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("partition", "committed", "end", "lag", "oldest unapplied"):
        partitions.add_column(column, justify="left" if column.startswith(("p", "o")) else "right")
    for p in lag.partitions:
        oldest = "-" if p.oldest_ms is None else f"{duration((now - p.oldest_ms) / 1000)} ago"
        committed = "-" if p.committed is None else f"{p.committed:,}"
        partitions.add_row(str(p.partition), committed, f"{p.end:,}", f"{p.lag:,}", oldest)

    tiers = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("retry tier", "waiting", "next due"):
        tiers.add_column(column, justify="right" if column == "waiting" else "left")
    for tier in ns.tiers:
        if tier.next_due_ms is None:
            due = "-"
        elif tier.next_due_ms <= now:
            due = f"due {duration((now - tier.next_due_ms) / 1000)} ago"
        else:
            due = f"in {duration((tier.next_due_ms - now) / 1000)}"
        tiers.add_row(tier.tier, f"{tier.waiting:,}", due)

    dlq = ns.dlq
    letters = Text(f"dead letters: {dlq.last_hour:,} in the last hour, {dlq.retained:,} retained")
    reasons = Table(box=None, pad_edge=False, show_edge=False, show_header=False)
    reasons.add_column(justify="right")
    reasons.add_column()
    reasons.add_column(overflow="ellipsis", no_wrap=True, max_width=80)
    for reason in dlq.top_reasons:
        # Text, not markup: a reason such as "field [amount]" is shown as it is.
        reasons.add_row(f"{reason.count:,}", Text(reason.error_class), Text(reason.reason))
    changes = Text(f"change events in the last minute: {ns.changes_last_minute:,}")
    parts: list[RenderableType] = [summary, flood, partitions, Text(""), tiers, Text(""), letters]
    if dlq.top_reasons:
        parts.append(reasons)
    parts.append(changes)
    return Panel(Group(*parts), title=f"[bold]{ns.namespace}[/bold]", title_align="left", expand=False)
