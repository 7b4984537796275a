"""Starts, recognises and stops the stack's own processes, always by the pid it recorded."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from connectors.local.errors import PortInUse

#: Every process the stack starts carries this variable; its value names the stack folder and the service,
#: so a recorded pid that the OS has since given to someone else is never mistaken for ours.
MARK_VAR = "WALSTREAM_STACK_MARK"


@dataclass(frozen=True, slots=True)
class Launch:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    log: Path
    user: int | None = None  # run as this uid (root only)
    group: int | None = None


def spawn(launch: Launch, mark: str) -> int:
    """Start a detached process group and return its leader's pid; output goes to ``launch.log``."""
    env = {**launch.env, MARK_VAR: mark}
    with launch.log.open("ab") as log:
        proc = subprocess.Popen(
            list(launch.argv),
            env=env,
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=launch.user,
            group=launch.group,
            extra_groups=[] if launch.user is not None else None,
        )
    return proc.pid


def is_ours(pid: int, mark: str) -> bool:
    """True while ``pid`` is alive and is the process we started with ``mark``."""
    for _ in range(20):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        if environ:
            break
        # An empty environment is what /proc shows while the process is in the middle of an exec.
        time.sleep(0.05)
    if _is_zombie(pid):
        return False
    return f"{MARK_VAR}={mark}".encode() in environ.split(b"\0")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (for a child we just started, whose pid cannot be reused)."""
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def members(pgid: int, mark: str) -> list[int]:
    """Live processes of the group ``pgid`` that carry ``mark`` (a launcher's children stay in its group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and is_ours(int(entry.name), mark):
            found.append(int(entry.name))
    return found


def stop(pid: int, mark: str, grace_s: float) -> bool:
    """SIGTERM our processes of the group, wait ``grace_s``, then SIGKILL those left. True if it had to kill.

    Only pids that carry ``mark`` are signalled, so a recycled pid is never touched.
    """
    targets = [pid] if is_ours(pid, mark) else members(pid, mark)
    for target in targets:
        _signal(target, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not members(pid, mark):
            return False
        time.sleep(0.2)
    for target in members(pid, mark):
        _signal(target, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not members(pid, mark):
            break
        time.sleep(0.1)
    return True


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(count: int) -> list[int]:
    """Distinct ports nobody listens on right now (the OS hands them out); ``LocalStack.up`` checks them again."""
    ports: set[int] = set()
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.add(sock.getsockname()[1])
    return sorted(ports)


def check_ports_free(ports: Mapping[str, int]) -> None:
    """Raise PortInUse naming every taken port and its setting, before anything is started."""
    taken = {name: port for name, port in ports.items() if port_taken(port)}
    if taken:
        listing = ", ".join(f"{port} ({name}, set with WALSTREAM_{name.upper()})" for name, port in taken.items())
        raise PortInUse(
            f"port(s) already in use: {listing}. Stop whatever holds them or choose other ports; nothing was started."
        )


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
