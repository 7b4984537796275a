"""The `walstream` command line: parses arguments and hands off to the composition root or the stack."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from connectors.local.errors import StackError
from streams.config import ConfigError, StackMode, load_settings


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _stack(args: argparse.Namespace) -> int:
    from connectors.local.stack import SERVICE_NAMES, LocalStack

    settings = load_settings()
    if settings.mode is not StackMode.LOCAL:
        _say(f"WALSTREAM_STACK_MODE is {settings.mode.value}: `walstream stack` manages only the local stack")
        return 2
    stack = LocalStack(settings.local, services=args.services or SERVICE_NAMES, progress=_say)
    if args.action == "up":
        result = stack.up()
        _print_status(stack)
        if result.started:
            _say(f"started {', '.join(result.started)} in {result.elapsed_s:.1f}s")
        return 0
    if args.action == "down":
        stopped = stack.down()
        _say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    if args.action == "status":
        healthy = _print_status(stack)
        return 0 if healthy else 1
    if args.action == "logs":
        for name in args.services or SERVICE_NAMES:
            print(f"==> {name} <==")
            print(stack.log_tail(name, args.lines))
        return 0
    raise AssertionError(args.action)


def _run(args: argparse.Namespace) -> int:
    from connectors.provision import provision

    settings = load_settings()
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
        print("\nwalstream is ready:")
        for name, where in endpoints.describe().items():
            print(f"  {name:<14} {where}")
        print("\nNext: `walstream stack status`, `walstream stack logs`, `walstream stack down`.")
    return 0


def _print_status(stack: object) -> bool:
    from connectors.local.stack import LocalStack

    assert isinstance(stack, LocalStack)
    rows = stack.status()
    print(f"{'service':<14} {'state':<10} {'pid':>8}  {'endpoint':<28} log")
    for row in rows:
        pid = str(row.pid) if row.pid else "-"
        print(f"{row.name:<14} {row.state:<10} {pid:>8}  {row.endpoint:<28} {row.log}")
    return all(row.healthy for row in rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="walstream", description="A write-ahead log in front of your datastores.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="run the embedded Kafka, Cassandra and Elasticsearch")
    stack.add_argument("action", choices=["up", "down", "status", "logs"])
    stack.add_argument("services", nargs="*", help="kafka, cassandra, elasticsearch (default: all)")
    stack.add_argument("-n", "--lines", type=int, default=40, help="log lines to show (logs)")
    stack.set_defaults(handler=_stack)

    run = sub.add_parser("run", help="the main job on the configured stack (`make run`)")
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except (StackError, ConfigError) as exc:
        _say(f"walstream: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("walstream: interrupted")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
