"""Several API server processes on one port: started, watched, restarted and stopped by one supervising parent.

**How the children start.** Each child is a fresh interpreter (``multiprocessing``'s *spawn*), never a fork: gRPC's
core and librdkafka run threads of their own, and a fork copies a process's memory without its threads, so a forked
gRPC or Kafka client is unsafe (gRPC's fork support covers clients only, and only when asked for). A fresh interpreter
has nothing to inherit, so the parent never needs to avoid importing anything; it creates no gRPC object at all.
Spawn hands the child its arguments pickled, so ``serve_processes`` serves exactly the namespaces and options it is
given, from the command line or a benchmark alike, not settings a child would read again.

**One port.** The parent first binds the port alone (an exclusive probe: a port in use is a clear error, and
``--port 0`` picks one), then every child listens on it with SO_REUSEPORT. The kernel spreads *connections* over the
children, not calls: one client channel stays on one process.

**Metrics and health.** Each child serves its own /metrics, /healthz and /readyz on an ephemeral loopback port and
tells the parent through a pipe, with its gRPC port, once it listens. The parent serves the pod's endpoints: /metrics
is every child's metrics, each sample labelled ``process`` with the child's slot (0..N-1; a restarted child keeps its
slot, its counters start again from 0 as after any restart); /healthz and /readyz ask the children. Prometheus'
multiprocess mode was the alternative: it needs an environment variable set before the metrics exist, files shared
by the processes, and a mode per gauge (``walstream_api_kafka_up`` and the calls in flight are per process), where
asking the children keeps each child an ordinary API process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from streams.api.listen import claim_port
from streams.health import HealthServer
from streams.namespaces import Namespace

if TYPE_CHECKING:
    from streams.api.server import Bootstrap as Kafka
    from streams.api.server import ServerOptions

log = logging.getLogger(__name__)

#: The label that tells the children's samples apart in the parent's /metrics.
PROCESS_LABEL = "process"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """A dead child starts again after a backoff that doubles with each death in the window; more than
    ``max_deaths`` deaths within ``window_s`` and the parent gives up on it (and reports unhealthy)."""

    max_deaths: int = 5
    window_s: float = 60.0
    first_delay_s: float = 0.5
    max_delay_s: float = 10.0


class Restarts:
    """One slot's recent deaths under a RestartPolicy."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._deaths: deque[float] = deque()
        self.total = 0

    def after_death(self, now: float) -> float | None:
        """Seconds to wait before starting the slot again, or None to give up."""
        policy = self._policy
        while self._deaths and now - self._deaths[0] > policy.window_s:
            self._deaths.popleft()
        self._deaths.append(now)
        if len(self._deaths) > policy.max_deaths:
            return None
        self.total += 1
        return float(min(policy.max_delay_s, policy.first_delay_s * 2 ** (len(self._deaths) - 1)))


def merge_metrics(texts: Mapping[str, str]) -> list[Metric]:
    """The children's /metrics texts as one set of families, each sample labelled ``process`` with its child's
    label (the key of ``texts``)."""
    families: dict[str, Metric] = {}
    for label, text in texts.items():
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            merged.samples.extend(s._replace(labels={**s.labels, PROCESS_LABEL: label}) for s in family.samples)
    return list(families.values())


@dataclass(frozen=True, slots=True)
class ChildView:
    """What the parent knows of one child; ``live`` and ``ready`` are its own answers (None: did not answer)."""

    slot: int
    pid: int | None
    state: str  # starting, serving, restarting, failed (given up), stopped
    restarts: int
    live: bool | None = None
    ready: bool | None = None


def overall_live(views: Iterable[ChildView]) -> bool:
    """Healthy unless a child was given up on, or a serving child says it is not (or does not answer)."""
    return all(v.state != "failed" and (v.state != "serving" or v.live is True) for v in views)


def overall_ready(views: Iterable[ChildView], stopping: bool) -> bool:
    """Ready when at least one child serves and every serving child is ready (they share one Kafka: one that is
    not ready means the others' answers are about to turn too)."""
    serving = [v for v in views if v.state == "serving"]
    return not stopping and bool(serving) and all(v.ready is True for v in serving)


def _get(port: int, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _Slot:
    def __init__(self, index: int, policy: RestartPolicy) -> None:
        self.index = index
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.state = "starting"
        self.health_port: int | None = None
        self.restart_at = 0.0
        self.restarts = Restarts(policy)
        self.served = False


class Supervisor:
    """Starts ``count`` children, restarts the ones that die, passes SIGTERM/SIGINT (and SIGHUP) on, and answers for
    them all. ``run`` returns the exit code: 0 only when every child exited cleanly after the stop."""

    def __init__(
        self,
        start_child: Callable[[int, Connection], BaseProcess],
        count: int,
        policy: RestartPolicy = RestartPolicy(),
        stop_timeout_s: float = 90.0,
    ) -> None:
        self._start_child = start_child
        self._slots = [_Slot(i, policy) for i in range(count)]
        self._stop_timeout_s = stop_timeout_s
        self._lock = threading.Lock()
        self._stop_requested = False
        self._stopping = False
        self._announced = False

    # -- what the parent's endpoints answer --

    def views(self, ask: bool = True) -> list[ChildView]:
        with self._lock:
            slots = [(s.index, s.process.pid if s.process else None, s.state, s.restarts.total, s.health_port)
                     for s in self._slots]  # fmt: skip
        views = []
        for index, pid, state, restarts, port in slots:
            live = ready = None
            if ask and state == "serving" and port is not None:
                with contextlib.suppress(OSError):
                    live = _get(port, "/healthz")[0] == 200
                with contextlib.suppress(OSError):
                    ready = _get(port, "/readyz")[0] == 200
            views.append(ChildView(index, pid, state, restarts, live, ready))
        return views

    def live(self) -> tuple[bool, dict[str, object]]:
        views = self.views()
        return overall_live(views), {"processes": [_asdict(v) for v in views]}

    def ready(self) -> tuple[bool, dict[str, object]]:
        views = self.views()
        return overall_ready(views, self._stopping), {"processes": [_asdict(v) for v in views]}

    def metrics_ports(self) -> dict[str, int]:
        with self._lock:
            return {str(s.index): s.health_port for s in self._slots if s.state == "serving" and s.health_port}

    # -- the loop --

    def request_stop(self) -> None:
        self._stop_requested = True

    def forward(self, signum: int) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.pid is not None and slot.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signum)

    def run(self, announce: Callable[[], None]) -> int:
        for slot in self._slots:
            self._start(slot)
        deadline: float | None = None
        clean = True
        while True:
            if self._stop_requested and not self._stopping:
                self._stopping = True
                deadline = time.monotonic() + self._stop_timeout_s
                self.forward(signal.SIGTERM)
            self._wait(0.2)
            now = time.monotonic()
            for slot in self._slots:
                clean = self._tend(slot, now, announce) and clean
            running = [s for s in self._slots if s.process is not None]
            if self._stopping and not running:
                break
            if not self._stopping and all(s.state == "failed" for s in self._slots):
                log.error("every API server process failed: stopping")
                return 1
            if deadline is not None and now > deadline:
                log.error("API server processes did not stop in %.0fs: killing them", self._stop_timeout_s)
                self.forward(signal.SIGKILL)
                deadline = None
        return 0 if clean and not any(s.state == "failed" for s in self._slots) else 1

    def _wait(self, timeout_s: float) -> None:
        handles: list[Any] = []
        for slot in self._slots:
            if slot.process is not None:
                handles.append(slot.process.sentinel)
            if slot.conn is not None:
                handles.append(slot.conn)
        if handles:
            wait(handles, timeout_s)
        else:
            time.sleep(timeout_s)

    def _start(self, slot: _Slot) -> None:
        receive, send = multiprocessing.Pipe(duplex=False)
        process = self._start_child(slot.index, send)
        send.close()  # the child holds its end: the parent's copy would keep the pipe open after the child died
        with self._lock:
            slot.process, slot.conn, slot.state, slot.health_port = process, receive, "starting", None
        log.info("API server process %d started (pid %s)", slot.index, process.pid)

    def _tend(self, slot: _Slot, now: float, announce: Callable[[], None]) -> bool:
        """Read the slot's news and act on it; False when its child exited uncleanly during the stop."""
        if slot.conn is not None and slot.conn.poll():
            try:
                _grpc_port, health_port = slot.conn.recv()
            except (EOFError, OSError):
                slot.conn.close()
                slot.conn = None
            else:
                with self._lock:
                    slot.state, slot.health_port, slot.served = "serving", health_port, True
                if not self._announced and all(s.state == "serving" for s in self._slots):
                    self._announced = True
                    announce()
        process = slot.process
        if process is not None and process.exitcode is not None:
            code = process.exitcode
            if slot.conn is not None:
                slot.conn.close()
            with self._lock:
                slot.process, slot.conn, slot.health_port = None, None, None
                slot.state = "stopped" if self._stopping else slot.state
            if self._stopping:
                if code != 0:
                    log.error("API server process %d (pid %s) exited with %s", slot.index, process.pid, code)
                return code == 0
            self._died(slot, process.pid, code, now)
        if slot.state == "restarting" and not self._stopping and now >= slot.restart_at:
            self._start(slot)
        return True

    def _died(self, slot: _Slot, pid: int | None, code: int, now: float) -> None:
        if not self._announced and not slot.served:
            # A child that dies before the set ever served stops the start: its error is one of configuration.
            log.error("API server process %d (pid %s) exited with %s before serving", slot.index, pid, code)
            with self._lock:
                slot.state = "failed"
            self.request_stop()
            return
        delay = slot.restarts.after_death(now)
        with self._lock:
            if delay is None:
                slot.state = "failed"
            else:
                slot.state, slot.restart_at = "restarting", now + delay
        if delay is None:
            log.error(
                "API server process %d (pid %s) exited with %s, too often: not restarted; /healthz answers 503",
                slot.index, pid, code,
            )  # fmt: skip
        else:
            log.warning(
                "API server process %d (pid %s) exited with %s: restarting in %.1fs", slot.index, pid, code, delay
            )


def _asdict(view: ChildView) -> dict[str, object]:
    return {name: getattr(view, name) for name in ChildView.__slots__}


class _ChildMetrics(Collector):
    """The children's /metrics, fetched when the parent's is asked for."""

    def __init__(self, ports: Callable[[], dict[str, int]]) -> None:
        self._ports = ports

    def collect(self) -> Iterable[Metric]:
        texts = {}
        for label, port in self._ports().items():
            with contextlib.suppress(OSError):
                status, body = _get(port, "/metrics")
                if status == 200:
                    texts[label] = body.decode()
        return merge_metrics(texts)


def _drain_when_orphaned(parent: int) -> None:
    """A child whose parent died without stopping it (SIGKILL) stops itself, draining, rather than serve on alone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("the supervising process %d is gone: shutting down", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _child(
    bootstrap: Kafka, namespaces: Mapping[str, Namespace], options: ServerOptions, conn: Connection, level: str
) -> None:
    """A child's whole life: serve until SIGTERM, telling the parent where once gRPC listens."""
    import logging.config

    from streams.api.server import run_loop, serve_until_signalled
    from streams.logs import logging_config

    logging.config.dictConfig(logging_config(level, json_lines=True))
    orphaned = threading.Thread(target=_drain_when_orphaned, args=(os.getppid(),), name="walstream-api-parent")
    orphaned.daemon = True
    orphaned.start()

    def announce(port: int, health_port: int | None) -> None:
        conn.send((port, health_port))

    code = run_loop(lambda: serve_until_signalled(bootstrap, namespaces, options, announce))
    conn.close()
    sys.exit(code)


def serve_processes(
    bootstrap: Kafka,
    namespaces: Mapping[str, Namespace],
    options: ServerOptions,
    processes: int = 1,
    policy: RestartPolicy = RestartPolicy(),
) -> int:
    """Serve with ``processes`` server processes on ``options.port`` until SIGINT or SIGTERM; 1 serves in this
    process (``streams.api.server.serve``). Prints ``walstream API serving on HOST:PORT`` once every process
    serves; the exit code is 0 only when every process drained and exited cleanly."""
    if processes < 1:
        raise ValueError("processes must be at least 1")
    if processes == 1:
        from streams.api.server import serve

        return serve(bootstrap, namespaces, options)
    port = claim_port(options.host, options.port)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    context = multiprocessing.get_context("spawn")

    def start_child(slot: int, conn: Connection) -> BaseProcess:
        prefix = options.transactional_id_prefix
        child_options = replace(
            options,
            port=port,
            reuse_port=True,
            metrics=None,
            metrics_port=0,
            metrics_host="127.0.0.1",
            producer_overrides=dict(options.producer_overrides),
            # Each process its own transactional ids, or the children would fence each other's transactions.
            transactional_id_prefix=f"{prefix}-p{slot}" if prefix else None,
        )
        process = context.Process(
            target=_child, args=(bootstrap, dict(namespaces), child_options, conn, level), name=f"walstream-api-{slot}"
        )
        process.start()
        return process

    supervisor = Supervisor(start_child, processes, policy, stop_timeout_s=options.grace_s + 60.0)
    http = None
    if options.metrics_port is not None:
        registry = CollectorRegistry()
        registry.register(_ChildMetrics(supervisor.metrics_ports))
        http = HealthServer(registry, supervisor.live, supervisor.ready, options.metrics_port, options.metrics_host)
        http.start()

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        supervisor.request_stop()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        supervisor.forward(signal.SIGHUP)

    previous = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    try:
        return supervisor.run(lambda: print(f"walstream API serving on {options.host}:{port}", flush=True))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if http is not None:
            http.stop()
