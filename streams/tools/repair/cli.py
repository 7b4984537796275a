"""The `walstream verify`, `backfill`, `reindex` and `replay` commands: their arguments, and their exit codes."""

from __future__ import annotations

import argparse
import functools
import json
import logging.config
from collections.abc import Callable
from pathlib import Path

from streams.config import Settings, load_settings
from streams.namespaces import Namespace
from streams.tools.common import UsageError, endpoints, namespaces, say
from streams.tools.repair.stores import RepairError

#: verify's exit codes: in sync, drift found, could not tell.
IN_SYNC, DRIFT, ERROR = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]


def _errors_exit_2(handler: Handler) -> Handler:
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from streams.logs import logging_config

        # The drivers' own lines go to stderr as JSON, warnings and up; what the command reports is plain text.
        logging.config.dictConfig(logging_config("WARNING", json_lines=True))
        try:
            return handler(args)
        except RepairError as exc:
            say(f"walstream: error: {exc}")
            return ERROR

    return run


def _namespace(settings: Settings, name: str) -> Namespace:
    found = namespaces(settings, None)
    if name not in found:
        raise UsageError(
            f"unknown namespace {name!r}; {settings.runtime.namespace_dir} has {', '.join(sorted(found)) or 'none'}"
        )
    ns = found[name]
    if ns.replication is not None:
        # Its stores hold sequence x 16 + region rank (README, "Cross-region replication"); these commands compare
        # and write plain sequences, so they would see drift everywhere and repair nothing.
        raise UsageError(
            f"namespace {name!r} is replicated ({', '.join(ns.replication.regions)}): the repair commands do not "
            "support replicated namespaces yet (their stores hold versions of sequence x 16 + region rank)"
        )
    return ns


def _targets(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


@_errors_exit_2
def verify_command(args: argparse.Namespace) -> int:
    from streams.tools.repair.stores import open_stores, pair_of
    from streams.tools.repair.verify import VerifyOptions, verify

    settings = load_settings()
    ns = _namespace(settings, args.namespace)
    pair = pair_of(ns, _targets(args.targets))
    eps = endpoints(settings, ("kafka", "cassandra", "elasticsearch"))
    options = VerifyOptions(
        keys_from=args.keys_from,
        grace_s=args.grace_s,
        examples=args.examples,
        use_log=not args.no_log,
        max_one_sided=args.max_one_sided,
        ranges=args.ranges,
    )
    stores = open_stores(eps, ns, pair, args.page_size)
    try:
        report = verify(stores, eps.kafka, options, say)
    finally:
        stores.close()
    if args.metrics_file:
        _write_metrics(Path(args.metrics_file), ns.name, report.tally)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return IN_SYNC if report.clean else DRIFT


def _write_metrics(path: Path, namespace: str, tally: object) -> None:
    """walstream_drift_keys in the Prometheus text format, for a node exporter's textfile collector (or a Job)."""
    from prometheus_client import write_to_textfile

    from streams.core.drift import Kind, Tally
    from streams.metrics import Metrics

    assert isinstance(tally, Tally)
    metrics = Metrics()
    for target in tally.targets:
        for kind in Kind:
            metrics.drift_keys.labels(namespace, target, kind.value).set(tally.counts[(target, kind)])
    write_to_textfile(str(path), metrics.registry)


@_errors_exit_2
def backfill_command(args: argparse.Namespace) -> int:
    from streams.tools.repair.backfill import BackfillOptions, backfill_search
    from streams.tools.repair.stores import open_stores, pair_of

    settings = load_settings()
    ns = _namespace(settings, args.namespace)
    pair = pair_of(ns, (args.source, args.to))
    if pair.primary != args.source:
        raise RepairError(
            f"backfill writes the search index from the primary store ({pair.primary} -> {pair.search}); "
            f"rebuild {pair.primary} with `walstream replay` from the log"
        )
    state = (
        Path(args.state)
        if args.state
        else settings.runtime.data_dir / "repair" / f"{ns.name}.{args.source}-{args.to}.json"
    )
    options = BackfillOptions(state, rate=args.rate, ranges=args.ranges, restart=args.restart, prune=args.prune)
    eps = endpoints(settings, ("kafka", "cassandra", "elasticsearch"))
    stores = open_stores(eps, ns, pair, args.page_size)
    try:
        report = backfill_search(stores, eps.kafka, options, say)
    finally:
        stores.close()
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


@_errors_exit_2
def replay_command(args: argparse.Namespace) -> int:
    from streams.tools.dlq import parse_time
    from streams.tools.repair.replay import ReplayOptions, replay, store_targets
    from streams.tools.repair.stores import check_targets

    settings = load_settings()
    ns = _namespace(settings, args.namespace)
    if ns.backend == "sqs":
        raise UsageError(
            f"namespace {ns.name!r} uses backend sqs: a queue keeps no history to replay (replay reads a Kafka log); "
            "`walstream backfill` copies from the primary store"
        )
    try:
        from_ms = parse_time(args.since)
        until_ms = parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if until_ms is not None and until_ms <= from_ms:
        raise UsageError("--until must be later than --from")
    chosen = store_targets(ns, _targets(args.targets))
    eps = endpoints(settings, ("kafka", "cassandra", "elasticsearch"))
    check_targets(eps, ns, chosen)
    report = replay(eps, ns, ReplayOptions(from_ms, until_ms, chosen, args.allow_gap), say)
    print("\n".join(report.lines(chosen)))
    return 0 if report.ok else 1


@_errors_exit_2
def reindex_command(args: argparse.Namespace) -> int:
    from streams.tools.repair.reindex import ReindexOptions, load_mapping, reindex, rollback
    from streams.tools.repair.stores import open_stores, pair_of

    settings = load_settings()
    ns = _namespace(settings, args.namespace)
    pair = pair_of(ns, _targets(args.targets))
    if not args.rollback and not args.mapping:
        raise UsageError("--mapping FILE is required (or --rollback)")
    new_target = None if args.rollback else load_mapping(Path(args.mapping), ns, pair.primary, pair.search)
    options = ReindexOptions(
        settings.runtime.data_dir / "repair",
        drop_old=args.drop_old,
        grace_s=args.grace_s,
        passes=args.passes,
        rate=args.rate,
        ranges=args.ranges,
        page_size=args.page_size,
    )
    eps = endpoints(settings, ("kafka", "cassandra", "elasticsearch"))
    stores = open_stores(eps, ns, pair, args.page_size)
    try:
        if new_target is None:
            print(rollback(stores, eps.kafka, options, say))
        else:
            print("\n".join(reindex(stores, eps.kafka, new_target, options, say).lines()))
    finally:
        stores.close()
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = sub.add_parser(
        "verify",
        help="compare a namespace's primary store and search index key by key (exit 0 in sync, 1 drift, 2 error)",
    )
    verify.add_argument("namespace")
    verify.add_argument("--targets", help="the Cassandra and the Elasticsearch target, comma-separated")
    verify.add_argument(
        "--keys-from", choices=["primary", "search", "both"], default="both", help="which store's keys to scan"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--grace-s", type=float, default=60.0, help="leave out keys written this recently (default 60)")
    verify.add_argument("--examples", type=int, default=5, help="example keys per target and kind (default 5)")
    verify.add_argument("--no-log", action="store_true", help="do not read the log: the primary is the reference")
    verify.add_argument("--max-one-sided", type=int, default=100_000, help="one-sided keys kept for the log check")
    verify.add_argument("--metrics-file", help="write walstream_drift_keys to this file (Prometheus text format)")
    _scan_options(verify)
    verify.set_defaults(handler=verify_command)

    backfill = sub.add_parser("backfill", help="rebuild the search index from the primary store, at its versions")
    backfill.add_argument("namespace")
    backfill.add_argument("--from", dest="source", required=True, help="the source target (the primary store)")
    backfill.add_argument("--to", required=True, help="the target to rebuild (the search index)")
    backfill.add_argument("--rate", type=float, default=0.0, help="rows per second (default: no limit)")
    backfill.add_argument("--state", help="the resume file (default: WALSTREAM_DATA_DIR/repair/NS.FROM-TO.json)")
    backfill.add_argument("--restart", action="store_true", help="ignore the resume file and start over")
    backfill.add_argument(
        "--prune",
        action="store_true",
        help="then delete documents the primary lacks (unless the log says it lost them)",
    )
    _scan_options(backfill)
    backfill.set_defaults(handler=backfill_command)

    reindex = sub.add_parser(
        "reindex", help="move the search index to a new generation with a new mapping, while the workers write"
    )
    reindex.add_argument("namespace")
    reindex.add_argument("--mapping", help="YAML file: fields (name: type), optionally shards and replicas")
    reindex.add_argument("--targets", help="the Cassandra and the Elasticsearch target, comma-separated")
    reindex.add_argument("--drop-old", action="store_true", help="delete the previous generation after the swap")
    reindex.add_argument("--rollback", action="store_true", help="undo a reindex that has not swapped yet")
    reindex.add_argument("--grace-s", type=float, default=30.0, help="verify leaves out keys this young (default 30)")
    reindex.add_argument("--passes", type=int, default=3, help="backfill passes until verify is clean (default 3)")
    reindex.add_argument("--rate", type=float, default=0.0, help="rows per second (default: no limit)")
    _scan_options(reindex)
    reindex.set_defaults(handler=reindex_command)

    replay = sub.add_parser("replay", help="re-apply the log's entries of a time range to targets")
    replay.add_argument("namespace")
    replay.add_argument("--from", dest="since", required=True, help="ISO time (UTC without a zone) or an age: 2h")
    replay.add_argument("--until", help="ISO time or an age (default: now)")
    replay.add_argument("--targets", help="comma-separated store targets (default: all)")
    replay.add_argument(
        "--allow-gap", action="store_true", help="replay what is left when retention removed part of the range"
    )
    replay.set_defaults(handler=replay_command)


def _scan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=int, default=1000, help="keys per page and per lookup (default 1000)")
    parser.add_argument("--ranges", type=int, default=64, help="Cassandra token ranges to scan (default 64)")
