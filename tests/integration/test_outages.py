"""Outages are quiet and visible: a worker applying a steady stream through a Kafka restart, a Cassandra restart
and a frozen Elasticsearch writes a handful of JSON lines, reports the dependency down and unready (never
unhealthy), does not spin while Kafka is away, and ends with the stores and the change topic exact."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.kafka.consumer import follow
from connectors.local.stack import LocalStack
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.codec import Codec
from streams.config import Settings, StackMode
from streams.model import Op
from streams.ports import Delivery
from streams.tools.cdc import read_cdc
from tests.integration.pipeline import (
    ScratchNamespace,
    WorkerProcess,
    cassandra_rows,
    create_namespace,
    es_docs,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.integration

OUTAGE_S = 30
MAX_LINES = 50


@pytest.fixture
def stack(settings: Settings, endpoints: Endpoints) -> LocalStack:
    if settings.mode is not StackMode.LOCAL:
        pytest.skip("outages are made on the local stack's own processes")
    return LocalStack(settings.local)


class SteadyStream:
    """Upserts of new keys, about 40 a second, from a thread, until stopped; remembers each answer."""

    def __init__(self, endpoints: Endpoints, ns: ScratchNamespace) -> None:
        self._ns = ns
        self._writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
        self.answers: dict[str, Future[Delivery]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.05):
            for _ in range(2):
                key = f"s{i:06d}"
                entry = self._writer.prepare(self._ns.name, key, Op.UPSERT, {"color": "steady", "qty": i})
                self.answers[key] = self._writer.submit_entry(entry)
                i += 1

    def start(self) -> SteadyStream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for future in self.answers.values():
            future.result(120)  # settled: TRUE, FALSE or UNKNOWN
        self._writer.close()

    def durable(self) -> set[str]:
        return {k for k, f in self.answers.items() if f.result(0).ok}


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _dependency_up(port: int, dependency: str) -> float | None:
    _status, text = _get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(f'walstream_dependency_up{{dependency="{dependency}"}}'):
            return float(line.rpartition(" ")[2])
    return None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines()


def _log_keys(endpoints: Endpoints, ns: ScratchNamespace) -> dict[str, str]:
    """Key -> entry id of every entry the log holds (what the stores must hold)."""
    codec = Codec()
    found = {}
    for record in follow(endpoints.kafka_bootstrap, topics.wal_topic(ns.name), from_beginning=True, idle_timeout_s=5):
        entry = codec.decode_entry(record.value)
        found[entry.key] = entry.entry_id
    return found


def _outage(kind: str, settings: Settings, stack: LocalStack) -> tuple[Callable[[], None], Callable[[], None]]:
    """(begin, end) of one outage of ``kind``."""
    frozen: list[int] = []

    def begin() -> None:
        if kind == "kafka":
            LocalStack(settings.local, services=["kafka"]).down()
        elif kind == "cassandra":
            LocalStack(settings.local, services=["cassandra"]).down()
        else:
            frozen.extend(stack.signal_service("elasticsearch", signal.SIGSTOP))

    def end() -> None:
        if kind in ("kafka", "cassandra"):
            LocalStack(settings.local, services=[kind]).up()
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen.clear()

    return begin, end


@pytest.mark.parametrize("kind", ["kafka", "cassandra", "elasticsearch"])
def test_an_outage_is_quiet_visible_and_loses_nothing(
    kind: str,
    settings: Settings,
    stack: LocalStack,
    endpoints: Endpoints,
    stores: tuple[Session, Elasticsearch],
    tmp_path: Path,
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns")
    port = free_port()
    log = tmp_path / "worker.log"  # stdout and stderr both
    worker = WorkerProcess(ns, tmp_path / "data", log, metrics_port=port).start()
    begin, end = _outage(kind, settings, stack)
    stream: SteadyStream | None = None
    ended = False
    try:
        wait_until(lambda: _get(port, "/readyz")[0] == 200 if _reachable(port) else False, 120, "ready", worker.tail)
        stream = SteadyStream(endpoints, ns).start()
        wait_until(lambda: len(cassandra_rows(session, ns.keyspace)) > 100, 120, "the stream to flow", worker.tail)
        before = len(_lines(log))
        began = time.monotonic()
        begin()
        # Seen as down: the gauge, and readiness (never health: a restart would not bring the dependency back).
        wait_until(lambda: _dependency_up(port, kind) == 0, 60, f"{kind} reported down", worker.tail)
        ready, healthy = _get(port, "/readyz"), _get(port, "/healthz")
        assert ready[0] == 503 and json.loads(ready[1])["dependencies"][kind]["up"] is False, ready
        assert healthy[0] == 200, healthy
        cpu_from, cpu_at = _cpu_seconds(worker.proc.pid), time.monotonic()  # type: ignore[union-attr]
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - began)))
        cpu = (_cpu_seconds(worker.proc.pid) - cpu_from) / (time.monotonic() - cpu_at)  # type: ignore[union-attr]
        end()
        ended = True
        wait_until(lambda: _dependency_up(port, kind) == 1, 120, f"{kind} reported up", worker.tail)
        wait_until(lambda: _get(port, "/readyz")[0] == 200, 120, "ready again", worker.tail)
        during = _lines(log)[before:]
        stream.stop()
        stream_keys = stream.durable()
        stream = None

        # The stores and the change topic hold exactly what the log holds (every durable answer among it).
        in_log = _log_keys(endpoints, ns)
        assert stream_keys <= set(in_log)
        want = {k: ("steady", int(k[1:])) for k in in_log}
        wait_until(lambda: cassandra_rows(session, ns.keyspace) == want, 180, "cassandra to hold the log", worker.tail)
        wait_until(lambda: es_docs(es, ns.index) == want, 180, "search to hold the log", worker.tail)
        events = list(read_cdc(endpoints, ns.name, 0, idle_timeout=10, from_beginning=True))
        assert sorted(e["source"]["entry_id"] for e in events) == sorted(in_log.values())  # one each, no more

        print(f"{kind} outage: {len(during)} log lines, worker at {cpu:.3f} cores while it lasted")
        not_json = [line for line in _lines(log) if not _is_json(line)]
        assert not not_json, not_json[:5]
        assert len(during) <= MAX_LINES, "\n".join(during[:80])
        assert not any(json.loads(line)["level"] in ("error", "critical") for line in during), during
        if kind == "kafka":
            assert cpu <= 0.1, f"the worker used {cpu:.2f} cores while Kafka was away"
        assert worker.alive()
    finally:
        if not ended:
            end()
        if stream is not None:
            stream.stop()
        worker.stop()
        ns.drop(session, es)


def _reachable(port: int) -> bool:
    try:
        _get(port, "/healthz")
        return True
    except OSError:
        return False


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
