"""The embedded stack's lifecycle: idempotent up, honest status, a clean down, and a clear port clash."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.endpoints import Endpoints
from connectors.local.errors import PortInUse
from connectors.local.process import MARK_VAR
from connectors.local.stack import SERVICE_NAMES, LocalStack
from streams.config import LocalStackSettings, Settings, StackMode
from tests.integration.pipeline import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def local(settings: Settings) -> LocalStackSettings:
    if settings.mode is not StackMode.LOCAL:
        pytest.skip(f"the local stack's lifecycle does not apply in {settings.mode.value} mode")
    return settings.local


def _kafka_only(local: LocalStackSettings, stack_dir: Path) -> LocalStackSettings:
    return local.model_copy(
        update={"stack_dir": stack_dir, "kafka_port": free_port(), "kafka_controller_port": free_port()}
    )


def _processes_marked(stack_dir: Path) -> list[int]:
    needle = f"{MARK_VAR}={stack_dir.resolve()}#".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if any(var.startswith(needle) for var in environ.split(b"\0")):
                found.append(int(entry.name))
    return found


def test_up_on_a_running_stack_starts_nothing(local: LocalStackSettings, endpoints: Endpoints) -> None:
    stack = LocalStack(local)
    before = stack.pids()
    assert set(before) == set(SERVICE_NAMES)
    result = stack.up()
    assert result.started == []
    assert result.already_running == list(SERVICE_NAMES)
    assert stack.pids() == before


def test_status_reports_every_service_healthy(local: LocalStackSettings, endpoints: Endpoints) -> None:
    rows = {row.name: row for row in LocalStack(local).status()}
    assert set(rows) == set(SERVICE_NAMES)
    for row in rows.values():
        assert row.state == "healthy", row
        assert row.pid is not None and Path(f"/proc/{row.pid}").exists()


def test_cli_status_prints_the_stack(local: LocalStackSettings, endpoints: Endpoints) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streams", "stack", "status"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for name in SERVICE_NAMES:
        line = next(line for line in out.stdout.splitlines() if line.startswith(name))
        assert "healthy" in line


def test_down_leaves_no_process_behind(local: LocalStackSettings, tmp_path: Path) -> None:
    stack = LocalStack(_kafka_only(local, tmp_path / "stack"), services=["kafka"])
    assert [row.state for row in stack.status()] == ["stopped"]
    stack.up()
    pid = stack.pids()["kafka"]
    assert [row.state for row in stack.status()] == ["healthy"]
    assert stack.down() == ["kafka"]
    assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split(b")")[1][:3]
    assert _processes_marked(tmp_path / "stack") == []
    assert stack.pids() == {}
    assert stack.down() == []  # a second down has nothing left to stop


def test_taken_port_is_a_clear_error_and_starts_nothing(local: LocalStackSettings, tmp_path: Path) -> None:
    settings = _kafka_only(local, tmp_path / "stack")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.kafka_port))
        squatter.listen()
        with pytest.raises(PortInUse) as err:
            LocalStack(settings, services=["kafka"]).up()
    assert str(settings.kafka_port) in str(err.value)
    assert "WALSTREAM_KAFKA_PORT" in str(err.value)
    assert _processes_marked(tmp_path / "stack") == []
    assert LocalStack(settings, services=["kafka"]).pids() == {}


def test_cli_reports_a_taken_port_without_a_traceback(local: LocalStackSettings, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "WALSTREAM_STACK_DIR": str(tmp_path / "stack"), "WALSTREAM_KAFKA_PORT": str(port)}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        out = subprocess.run(
            [sys.executable, "-m", "streams", "stack", "up", "kafka"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert out.returncode == 2
    assert f"{port}" in out.stderr and "already in use" in out.stderr
    assert "Traceback" not in out.stderr
    assert _processes_marked(tmp_path / "stack") == []
