"""`walstream stack …`: the embedded stack's lifecycle, status and client settings on the command line."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable

from connectors.local.stack import SERVICE_NAMES, LocalStack
from streams.config import StackMode, load_settings


def run_stack(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    settings = load_settings()
    if settings.mode is not StackMode.LOCAL:
        say(f"WALSTREAM_STACK_MODE is {settings.mode.value}: `walstream stack` manages only the local stack")
        return 2
    local = settings.local.model_copy(update={"secure": True}) if args.secure else settings.local
    stack = LocalStack(local, services=args.services or SERVICE_NAMES, progress=say)
    if args.action == "env":
        # What a shell needs to use this stack from elsewhere: `eval "$(walstream stack env)"`.
        for name, value in stack.client_env().items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    if args.action == "up":
        result = stack.up()
        print_status(stack)
        if result.started:
            say(f"started {', '.join(result.started)} in {result.elapsed_s:.1f}s")
        return 0
    if args.action == "down":
        stopped = stack.down()
        say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    if args.action == "status":
        healthy = print_status(stack)
        return 0 if healthy else 1
    if args.action == "logs":
        for name in stack.names:
            print(f"==> {name} <==")
            print(stack.log_tail(name, args.lines))
        return 0
    raise AssertionError(args.action)


def print_status(stack: LocalStack) -> bool:
    rows = stack.status()
    print(f"{'service':<14} {'state':<10} {'pid':>8}  {'endpoint':<28} log")
    for row in rows:
        pid = str(row.pid) if row.pid else "-"
        print(f"{row.name:<14} {row.state:<10} {pid:>8}  {row.endpoint:<28} {row.log}")
    if stack.secure:
        print(f"secured: TLS and passwords (secrets in {stack.secrets.dir}); client settings: walstream stack env")
    else:
        print("open: no TLS, no passwords (`walstream stack up --secure` on an empty stack dir secures it)")
    return all(row.healthy for row in rows)
