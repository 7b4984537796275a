"""`walstream api --processes N`: N server processes on one port, their calls in one /metrics, a dead one
restarted, SIGTERM drained by all of them, and a port in use refused clearly with any N."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.endpoints import Endpoints
from streams.client.grpc import WalClient, write_request
from streams.namespaces import Namespace
from streams.ports import Durable
from tests.integration.pipeline import REPO, ApiRun, api_process, free_port, wait_until
from tests.integration.test_api_harness import (
    drop_created_topics,  # noqa: F401 - an autouse fixture
    write_namespace,
)
from tests.integration.test_api_health import get

pytestmark = pytest.mark.integration

#: Each client its own connection: channels to one target otherwise share one (and so one server process).
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-processes")


@pytest.fixture(scope="module")
def namespace(endpoints: Endpoints, folder: Path) -> Namespace:
    return write_namespace(folder, endpoints.kafka_bootstrap)


def _env(endpoints: Endpoints, folder: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "WALSTREAM_NAMESPACE_DIR": str(folder),
    }


class TwoProcesses:
    def __init__(self, run: ApiRun, metrics_port: int) -> None:
        self.run = run
        self.metrics_port = metrics_port

    def children(self) -> list[dict[str, object]]:
        body = get(self.metrics_port, "/healthz")[1]
        found: list[dict[str, object]] = json.loads(body)["processes"]
        return found

    def calls_by_process(self) -> dict[str, float]:
        text = get(self.metrics_port, "/metrics")[1]
        return {
            s.labels["process"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "walstream_api_calls_total" and s.labels.get("method") == "WriteToLog"
        }

    def write_from_new_channels(self, namespace: Namespace, count: int) -> list[Durable]:
        answers = []
        for i in range(count):
            with WalClient(f"127.0.0.1:{self.run.port}", options=_OWN_CONNECTION) as client:
                request = write_request(namespace.name, f"k{i}", "UPSERT", {"sku": str(i)})
                answers.append(client.write_to_log(request).durable)
        return answers


@pytest.fixture(scope="module")
def two(endpoints: Endpoints, folder: Path, namespace: Namespace) -> Iterator[TwoProcesses]:
    metrics_port = free_port()
    with api_process(_env(endpoints, folder), "--processes", "2", "--metrics-port", str(metrics_port)) as run:
        yield TwoProcesses(run, metrics_port)


def test_calls_from_several_channels_reach_both_processes(two: TwoProcesses, namespace: Namespace) -> None:
    assert [c["state"] for c in two.children()] == ["serving", "serving"]
    wait_until(lambda: answers_ok(two), 60, "/healthz and /readyz 200 once both processes reach Kafka")
    pids = {c["pid"] for c in two.children()}
    assert len(pids) == 2 and two.run.process is not None and two.run.process.pid not in pids

    def both_called() -> bool:
        assert set(two.write_from_new_channels(namespace, 4)) == {Durable.TRUE}
        calls = two.calls_by_process()
        return calls.get("0", 0) > 0 and calls.get("1", 0) > 0

    wait_until(both_called, 120, "calls on both processes")


def answers_ok(two: TwoProcesses) -> bool:
    return get(two.metrics_port, "/healthz")[0] == 200 and get(two.metrics_port, "/readyz")[0] == 200


def test_a_killed_process_is_restarted_and_serves_again(two: TwoProcesses, namespace: Namespace) -> None:
    victim = two.children()[0]
    os.kill(int(str(victim["pid"])), signal.SIGKILL)

    def replaced() -> bool:
        child = two.children()[0]
        return child["state"] == "serving" and child["pid"] != victim["pid"] and child["restarts"] == 1

    wait_until(replaced, 120, "process 0 restarted and serving")
    wait_until(lambda: answers_ok(two), 60, "/healthz and /readyz 200 again")
    # Its counters began again at 0: a count now is a call the new process served.
    assert "0" not in two.calls_by_process() or two.calls_by_process()["0"] == 0

    def new_child_called() -> bool:
        assert set(two.write_from_new_channels(namespace, 4)) == {Durable.TRUE}
        return two.calls_by_process().get("0", 0) > 0

    wait_until(new_child_called, 120, "calls on the restarted process")


def test_sigterm_drains_every_process_and_exits_0(endpoints: Endpoints, folder: Path, namespace: Namespace) -> None:
    metrics_port = free_port()
    with api_process(_env(endpoints, folder), "--processes", "2", "--metrics-port", str(metrics_port)) as run:
        assert run.process is not None
        body = get(metrics_port, "/healthz")[1]
        pids = [int(c["pid"]) for c in json.loads(body)["processes"]]
        with WalClient(f"127.0.0.1:{run.port}") as client:
            assert client.write_to_log(write_request(namespace.name, "x", "UPSERT", {"sku": "x"})).durable is (
                Durable.TRUE
            )
        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(timeout=120) == 0
    output = "".join(run.lines)
    assert output.count("shutting down: draining calls in flight") == 2, output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_port_in_use_is_a_clear_error(endpoints: Endpoints, folder: Path, processes: int) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "streams", "api", "--port", str(port), "--processes", str(processes)],
            cwd=REPO,
            env=_env(endpoints, folder),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "already in use" in done.stderr, done.stderr
    assert "walstream API serving" not in done.stdout


def test_a_process_that_keeps_dying_is_given_up_and_the_set_is_unhealthy(
    endpoints: Endpoints, folder: Path, namespace: Namespace
) -> None:
    metrics_port = free_port()
    with api_process(_env(endpoints, folder), "--processes", "2", "--metrics-port", str(metrics_port)) as run:
        two = TwoProcesses(run, metrics_port)
        wait_until(lambda: answers_ok(two), 60, "both processes ready")
        killed: set[object] = set()

        def kill_until_given_up() -> bool:
            child = two.children()[1]
            if child["state"] == "failed":
                return True
            if child["state"] == "serving" and child["pid"] not in killed:
                killed.add(child["pid"])
                os.kill(int(str(child["pid"])), signal.SIGKILL)
            return False

        wait_until(kill_until_given_up, 180, "process 1 given up after dying too often")
        status, body = get(metrics_port, "/healthz")
        assert status == 503 and [c["state"] for c in json.loads(body)["processes"]] == ["serving", "failed"]
        # The other one still serves, and the set stays ready through it.
        assert get(metrics_port, "/readyz")[0] == 200
        assert set(two.write_from_new_channels(namespace, 2)) == {Durable.TRUE}
        assert run.process is not None
        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(timeout=120) == 1  # not every process exited cleanly
