"""The `walstream` command line: parses arguments and hands off to the composition root or the stack."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Sequence

from connectors.endpoints import AccessRefused
from connectors.local.errors import StackError
from connectors.provision import provision
from connectors.sqs.client import SqsUnavailable
from streams.api.listen import ListenError
from streams.config import ConfigError, Settings, StackMode, load_settings
from streams.namespaces import Namespace, NamespaceError
from streams.tools.common import STORES_TOO as _STORES_TOO
from streams.tools.common import UsageError, region_endpoints
from streams.tools.common import endpoints as _endpoints
from streams.tools.common import namespaces as _namespaces
from streams.tools.common import say as _say
from streams.tools.dlq_cli import dlq_list as _dlq_list
from streams.tools.dlq_cli import dlq_replay as _dlq_replay
from streams.tools.dlq_cli import dlq_show as _dlq_show
from streams.tools.repair.cli import add_parsers as _add_repair_parsers
from streams.tools.replication import add_parsers as _add_replication_parsers
from streams.tools.status_view import add_parser as _add_status_parser
from streams.topics import sqs_queue


def _stack(args: argparse.Namespace) -> int:
    from streams.tools.stack import run_stack

    return run_stack(args, _say)


def _run(args: argparse.Namespace) -> int:
    from streams.tools.demo import run_demo

    _json_logs("WARNING")
    settings = load_settings()
    namespaces = _namespaces(settings, None)
    if args.namespace not in namespaces:
        raise UsageError(f"no namespace {args.namespace!r} in {settings.runtime.namespace_dir}")
    with contextlib.ExitStack() as stack:
        if settings.mode is StackMode.LOCAL:
            # `make run` leaves the local stack up for the user; `walstream stack down` stops it.
            from connectors.local.stack import LocalStack

            local = LocalStack(settings.local, progress=_say)
            local.up()
            _print_status(local)
            endpoints = local.endpoints()
        else:
            endpoints = stack.enter_context(provision(settings, progress=_say))
        ok = run_demo(
            endpoints,
            namespaces[args.namespace],
            settings.runtime.namespace_dir,
            settings.runtime.data_dir,
            _say,
            count=args.entries,
            keys=args.keys,
        )
    print("\nThe stack is still up: `walstream stack status`, `walstream cdc tail orders`, `walstream stack down`.")
    return 0 if ok else 1


def _ns_validate(args: argparse.Namespace) -> int:
    settings = load_settings()
    namespaces = _namespaces(settings, args.paths)
    for ns in namespaces.values():
        targets = ", ".join(f"{name} ({t.type})" for name, t in ns.targets.items())
        print(
            f"ok  {ns.name}: {ns.partitions} partitions, persona {ns.persona}, targets {targets}, "
            f"log retention {ns.retention}"
            if ns.backend == "kafka"
            else f"ok  {ns.name}: backend sqs (queue {sqs_queue(ns.name)}), persona {ns.persona}, targets {targets}"
        )
    return 0


def _ns_apply(args: argparse.Namespace) -> int:
    from streams.worker.targets import apply_namespaces

    settings = load_settings()
    namespaces = _namespaces(settings, args.paths)
    local = _endpoints(settings, _STORES_TOO)
    visibility = settings.sqs.visibility_s
    asyncio.run(apply_namespaces(namespaces.values(), local, progress=_say, sqs_visibility_s=visibility))
    # A replicated namespace is made in every one of its other regions too (topics, keyspaces and indices), with
    # the same partition count, so each region's workers and MirrorMaker 2 find them.
    for region, spec in settings.region.endpoints.items():
        if region == settings.region.name:
            continue
        there = [
            ns.in_region(region, spec.store_suffix)
            for ns in namespaces.values()
            if ns.replication is not None and region in ns.replication.regions
        ]
        if there:
            _say(f"region {region}:")
            asyncio.run(
                apply_namespaces(
                    there, region_endpoints(settings, local, region), progress=_say, sqs_visibility_s=visibility
                )
            )
    return 0


def _worker(args: argparse.Namespace) -> int:
    import logging.config

    from streams.logs import logging_config
    from streams.metrics import Metrics
    from streams.worker.app import use_uvloop
    from streams.worker.process import Role, Worker, WorkerOptions

    # Before any client exists: librdkafka logs from a producer's first moments too, and each line must be JSON.
    logging.config.dictConfig(logging_config("INFO", args.log_format == "json"))
    use_uvloop()

    settings = load_settings()
    namespaces = _namespaces(settings, None)
    chosen = [n.strip() for n in args.namespaces.split(",")] if args.namespaces else sorted(namespaces)
    unknown = [n for n in chosen if n not in namespaces]
    if unknown:
        raise UsageError(
            f"unknown namespace(s) {', '.join(unknown)}; {settings.runtime.namespace_dir} has "
            f"{', '.join(sorted(namespaces)) or 'none'}"
        )
    queued = [n for n in chosen if namespaces[n].backend == "sqs"]
    if queued:
        return _sqs_worker(args, settings, [namespaces[n] for n in chosen], queued)
    group = args.group or (chosen[0] if len(chosen) == 1 else "default")
    options = WorkerOptions(
        group=group,
        data_dir=settings.runtime.data_dir / group,
        role=Role.RETRY if args.retry else Role(args.role),
        replication_factor=settings.runtime.replication_factor,
        batch_size=args.batch_size,
        metrics_port=args.metrics_port,
        metrics_host=settings.runtime.metrics_host,
        stall_s=args.stall_seconds,
        crash_grace_s=args.crash_grace,
        json_logs=args.log_format == "json",
    )
    endpoints = _endpoints(settings, ("kafka",) if options.role is Role.RETRY else _STORES_TOO)
    worker = Worker(endpoints, [namespaces[n] for n in chosen], options, Metrics())
    return worker.run()


def _sqs_worker(args: argparse.Namespace, settings: Settings, chosen: list[Namespace], queued: list[str]) -> int:
    """A worker of SQS namespaces: its own event loop, no Faust (that is the Kafka side's framework)."""
    from streams.metrics import Metrics
    from streams.worker.sqs_worker import SqsWorker, SqsWorkerOptions

    if len(queued) != len(chosen):
        logged = ", ".join(ns.name for ns in chosen if ns.name not in queued)
        raise UsageError(
            f"namespace(s) {', '.join(queued)} use backend sqs and {logged} use kafka; run them in separate workers "
            "(--namespaces)"
        )
    if args.retry or args.role == "retry":
        raise UsageError("an SQS namespace has no retry tiers to run: its retries wait in the queue itself")
    options = SqsWorkerOptions(settings.sqs, metrics_port=args.metrics_port, metrics_host=settings.runtime.metrics_host)
    worker = SqsWorker(_endpoints(settings, _STORES_TOO), chosen, options, Metrics())
    return worker.run()


def _json_logs(level: str) -> None:
    """Long-running commands log JSON lines to stderr (their clients' too), held to one per kind while a
    dependency is down; what the command itself reports goes to stdout or stays a plain message."""
    import logging.config

    from streams.logs import logging_config

    logging.config.dictConfig(logging_config(level, json_lines=True))


def _produce(args: argparse.Namespace) -> int:
    from streams.tools.produce import produce_lines

    settings = load_settings()
    namespaces = _namespaces(settings, None)
    if args.namespace not in namespaces:
        raise UsageError(f"unknown namespace {args.namespace!r}; known: {', '.join(sorted(namespaces)) or 'none'}")
    source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    with source:
        report = produce_lines(_endpoints(settings), namespaces, args.namespace, source, _say)
    _say(report.summary())
    return 0 if report.ok else 1


def _cdc_tail(args: argparse.Namespace) -> int:
    from streams.tools.cdc import tail_cdc

    _json_logs("WARNING")
    settings = load_settings()
    tail_cdc(_endpoints(settings), args.namespace, args.max, args.timeout, args.from_beginning)
    return 0


def _api(args: argparse.Namespace) -> int:
    from streams.api.processes import serve_processes
    from streams.api.server import ServerOptions, TlsFiles

    _json_logs("INFO")
    settings = load_settings()
    api = settings.api
    namespaces = _namespaces(settings, None)
    processes = args.processes if args.processes is not None else api.processes
    if processes < 1:
        raise UsageError("--processes must be at least 1")
    options = ServerOptions(
        host=api.host,
        port=args.port if args.port is not None else api.port,
        max_in_flight=api.max_in_flight,
        stream_window=api.stream_window,
        linger_ms=api.linger_ms,
        tokens_file=api.tokens_file,
        tls=TlsFiles(api.tls_cert, api.tls_key, api.tls_client_ca) if api.tls_cert and api.tls_key else None,
        grace_s=api.grace_s,
        ack_timeout_s=api.ack_timeout_s,
        idempotency_ttl_s=api.idempotency_ttl_s,
        idempotency_max_keys=api.idempotency_max_keys,
        transactional_producers=api.txn_producers,
        transactional_id_prefix=api.txn_id_prefix,
        max_message_bytes=api.max_message_bytes,
        metrics_port=args.metrics_port if args.metrics_port is not None else api.metrics_port,
        metrics_host=settings.runtime.metrics_host,
        kafka_unreachable_s=api.kafka_unreachable_s,
    )
    endpoints = _endpoints(settings)
    options = dataclasses.replace(options, sqs=endpoints.sqs, sqs_max_delay_s=settings.sqs.max_delay_s)
    return serve_processes(endpoints.kafka, namespaces, options, processes)


def _print_status(stack: object) -> bool:
    from connectors.local.stack import LocalStack
    from streams.tools.stack import print_status

    assert isinstance(stack, LocalStack)
    return print_status(stack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="walstream", description="A write-ahead log in front of your datastores.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser(
        "stack",
        help="run the embedded Kafka, Cassandra and Elasticsearch",
        description="Run real Kafka, Cassandra and Elasticsearch as local processes, tracked by pid.",
        epilog=(
            "Where things live: artifacts in WALSTREAM_CACHE_DIR (root: /var/cache/walstream, others: "
            "$XDG_CACHE_HOME/walstream), config, data, logs and pids in WALSTREAM_STACK_DIR (root: "
            "/var/lib/walstream/stack, others: $XDG_STATE_HOME/walstream/stack). "
            "One service at a time: `walstream stack down cassandra`, then `walstream stack up cassandra`. "
            "`walstream stack env` prints the WALSTREAM_* settings another process needs to use the stack "
            "(external mode; secured stacks' passwords as files)."
        ),
    )
    stack.add_argument("action", choices=["up", "down", "status", "logs", "env"])
    stack.add_argument(
        "services", nargs="*", help="kafka, cassandra, elasticsearch, kafka-west, mirrormaker (default: all)"
    )
    stack.add_argument(
        "--regions",
        type=int,
        choices=[1, 2],
        default=None,
        help="up: 2 adds a second region (its own Kafka, kafka-west) and MirrorMaker 2 between the two "
        "(WALSTREAM_STACK_REGIONS); status and down cover whatever is running",
    )
    stack.add_argument("--region", default=None, help="env: the settings of a process in this region (east, west)")
    stack.add_argument("-n", "--lines", type=int, default=40, help="log lines to show (logs)")
    stack.add_argument(
        "--secure",
        action="store_true",
        help="up: TLS and passwords on every service (the same as WALSTREAM_STACK_SECURE=true); the other "
        "actions follow what the stack dir was made for",
    )
    stack.set_defaults(handler=_stack)

    run = sub.add_parser("run", help="the main job on the configured stack (`make run`)")
    run.add_argument("--namespace", default="orders", help="the namespace to run (default: orders)")
    run.add_argument("--entries", type=int, default=20000, help="entries to write (default 20000)")
    run.add_argument("--keys", type=int, default=4000, help="distinct keys they touch (default 4000)")
    run.set_defaults(handler=_run)

    ns = sub.add_parser("namespaces", help="check namespace files, or create their topics, tables and indices")
    ns_sub = ns.add_subparsers(dest="ns_action", required=True, metavar="ACTION")
    validate = ns_sub.add_parser("validate", help="validate namespace files (default: WALSTREAM_NAMESPACE_DIR)")
    validate.add_argument("paths", nargs="*")
    validate.set_defaults(handler=_ns_validate)
    apply = ns_sub.add_parser("apply", help="create topics, Cassandra tables and Elasticsearch indices")
    apply.add_argument("paths", nargs="*")
    apply.set_defaults(handler=_ns_apply)

    worker = sub.add_parser("worker", help="run the stream worker: fan entries out to their targets")
    worker.add_argument("--namespaces", help="comma-separated namespaces (default: all in WALSTREAM_NAMESPACE_DIR)")
    worker.add_argument("--group", help="worker group name; the consumer group is walstream.<group>")
    worker.add_argument("--batch-size", type=int, default=500, help="records per fan-out batch (default 500)")
    worker.add_argument(
        "--role",
        choices=["all", "fanout", "retry"],
        default="all",
        help="all (default): the logs and their retry tiers; fanout: only the logs; retry: only the retry tiers",
    )
    worker.add_argument("--retry", action="store_true", help="the same as --role retry")
    worker.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port")
    worker.add_argument(
        "--stall-seconds",
        type=float,
        default=120.0,
        help="unhealthy when records wait and nothing was committed for this long (default 120)",
    )
    worker.add_argument(
        "--crash-grace",
        type=float,
        default=15.0,
        help="after an agent crash, report unhealthy this long, then exit (default 15)",
    )
    worker.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines (default json)")
    worker.set_defaults(handler=_worker)

    api = sub.add_parser("api", help="serve the WriteToLog gRPC API (settings: WALSTREAM_API_*)")
    api.add_argument("--port", type=int, help="gRPC port (default WALSTREAM_API_PORT, 50051)")
    api.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port")
    api.add_argument(
        "--processes",
        type=int,
        help="server processes sharing the port, supervised by this one (default WALSTREAM_API_PROCESSES, 1)",
    )
    api.set_defaults(handler=_api)

    produce = sub.add_parser("produce", help="write JSON lines ({key, op, payload, ...}) to a namespace")
    produce.add_argument("namespace")
    produce.add_argument("file", nargs="?", default="-", help="a file of JSON lines (default: stdin)")
    produce.set_defaults(handler=_produce)

    cdc = sub.add_parser("cdc", help="read a namespace's change events")
    cdc_sub = cdc.add_subparsers(dest="cdc_action", required=True, metavar="ACTION")
    tail = cdc_sub.add_parser("tail", help="print change events as JSON lines")
    tail.add_argument("namespace")
    tail.add_argument("--max", type=int, default=0, help="stop after this many events (0: no limit)")
    tail.add_argument("--timeout", type=float, default=0.0, help="stop after this many idle seconds (0: never)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest event, not the newest")
    tail.set_defaults(handler=_cdc_tail)

    dlq = sub.add_parser("dlq", help="inspect and replay a namespace's dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")
    for action, handler, text in (
        ("list", _dlq_list, "one line per dead letter"),
        ("show", _dlq_show, "everything about one dead letter"),
        ("replay", _dlq_replay, "write the entries back to the log, with their original ids and sequences"),
    ):
        cmd = dlq_sub.add_parser(action, help=text)
        cmd.add_argument("namespace")
        if action == "show":
            cmd.add_argument("id", help="entry id, or partition:offset in the DLQ")
        cmd.add_argument("--error-class", choices=["undecodable", "fatal", "exhausted", "unauthorized"])
        cmd.add_argument("--reason", help="only letters whose reason contains this text")
        cmd.add_argument("--since", help="only letters failed at or after: ISO time, or an age such as 2h")
        cmd.add_argument("--until", help="only letters failed before: ISO time, or an age such as 15m")
        if action == "replay":
            cmd.add_argument(
                "--skip",
                action="append",
                default=[],
                metavar="ENTRY_ID",
                help="leave this entry out (repeatable): replay everything but a known-bad write",
            )
        cmd.set_defaults(handler=handler)

    _add_replication_parsers(sub)
    _add_repair_parsers(sub)
    _add_status_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except (
        StackError,
        ConfigError,
        UsageError,
        NamespaceError,
        FileNotFoundError,
        AccessRefused,
        ListenError,
        SqsUnavailable,
    ) as exc:
        _say(f"walstream: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("walstream: interrupted")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
