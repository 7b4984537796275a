"""The embedded stack's lifecycle: up (idempotent), down (only what it started), status and logs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from connectors.endpoints import Endpoints
from connectors.local import secured, versions
from connectors.local.artifacts import ArtifactCache
from connectors.local.credentials import StackSecrets, ensure_secrets, secrets_of
from connectors.local.errors import DiskFull, StackError
from connectors.local.java import JavaRuntime, find_java
from connectors.local.process import (
    alive,
    check_ports_free,
    free_ports,
    is_ours,
    log_tail,
    members,
    port_open,
    spawn,
    stop,
)
from connectors.local.services import HOST, LOCAL_REGIONS, Service, all_services, describe_failure
from connectors.sqs.client import SqsAccess
from streams.config import LocalStackSettings

Progress = Callable[[str], None]

StateEntry = dict[str, Any]

SERVICE_NAMES = ("kafka", "cassandra", "elasticsearch", "elasticmq")
#: What ``regions=2`` adds: the second region's Kafka and the MirrorMaker 2 process between the two.
REGION_SERVICE_NAMES = ("kafka-west", "mirrormaker")
ALL_SERVICE_NAMES = (*SERVICE_NAMES, *REGION_SERVICE_NAMES)
_OPEN_ONLY = ("elasticmq",)
_MIN_FREE_BYTES = 2 << 30
_STOP_GRACE_S = 30.0


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    pid: int | None
    port: int
    endpoint: str
    running: bool
    healthy: bool
    log: Path

    @property
    def state(self) -> str:
        if not self.running:
            return "stopped"
        return "healthy" if self.healthy else "unhealthy"


@dataclass(slots=True)
class UpResult:
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    ready_after_s: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0


class LocalStack:
    """Kafka, Cassandra and Elasticsearch as local processes, tracked by pid in ``<stack_dir>/state.json``.

    Open or secured is a property of the stack dir: its data is made for one of them, and the file
    ``<stack_dir>/security`` says which. ``up`` refuses settings that disagree with it; every other action
    (status, env, down) follows it, so ``walstream stack env`` needs no ``--secure``.
    """

    def __init__(
        self,
        settings: LocalStackSettings,
        services: Sequence[str] | None = None,
        progress: Progress = lambda _msg: None,
    ) -> None:
        """``services`` None: the stack's three servers, plus the second region's when ``settings.regions`` is 2
        or when the stack dir records them running (so status and down cover a two-region stack as it is)."""
        if services is None:
            services = SERVICE_NAMES
            if settings.regions > 1 or _recorded_regions(settings.stack_dir):
                services = ALL_SERVICE_NAMES
        unknown = set(services) - set(ALL_SERVICE_NAMES)
        if unknown:
            raise StackError(f"unknown service(s) {sorted(unknown)}; the stack has {list(ALL_SERVICE_NAMES)}")
        self._asked_secure = settings.secure
        recorded = _recorded_security(settings.stack_dir)
        if recorded is not None and recorded != settings.secure:
            settings = settings.model_copy(update={"secure": recorded})
        self.settings = settings
        # ElasticMQ has no TLS or passwords: a secured stack runs without it (SQS namespaces need an open one).
        self.names = [n for n in ALL_SERVICE_NAMES if n in services and not (settings.secure and n in _OPEN_ONLY)]
        self._progress = progress
        self._state_path = settings.stack_dir / "state.json"
        self._java: JavaRuntime | None = None

    @property
    def secure(self) -> bool:
        return self.settings.secure

    @property
    def secrets(self) -> StackSecrets:
        return secrets_of(self.settings.stack_dir)

    # -- public lifecycle -------------------------------------------------------------------------

    def up(self) -> UpResult:
        """Start whatever is not running yet and wait until each answers a real client call."""
        began = time.monotonic()
        result = UpResult()
        with self._locked():
            self._check_security()
            if self.secure and set(self.names) & set(REGION_SERVICE_NAMES):
                raise StackError(
                    "the second region (kafka-west, mirrormaker) runs on an open stack only; nothing was started"
                )
            state = self._read_state()
            services = self._services()
            to_start: list[Service] = []
            for svc in services:
                entry = state.get(svc.name)
                if entry and is_ours(entry["pid"], entry["mark"]):
                    result.already_running.append(svc.name)
                else:
                    state.pop(svc.name, None)
                    to_start.append(svc)
            if not to_start:
                self._progress(f"stack already running ({', '.join(result.already_running)}); nothing started")
                result.elapsed_s = time.monotonic() - began
                return result
            check_ports_free({k: v for svc in to_start for k, v in svc.ports().items()})
            self._check_disk()
            if self.secure:
                ensure_secrets(self.settings.stack_dir)
                self._progress(f"secured stack: certificates and passwords in {self.secrets.dir}")
            # Only once the secrets exist: a first secured start that cannot make them leaves the folder open.
            _record_security(self.settings.stack_dir, self.secure)
            cache = ArtifactCache(self.settings.cache_dir, self._progress)
            for svc in to_start:
                svc.fetch(cache)
            started: list[Service] = []
            try:
                # MirrorMaker 2 starts once both regions' Kafka answer: it needs them to make its own topics.
                for phase in (
                    [svc for svc in to_start if svc.name != "mirrormaker"],
                    [svc for svc in to_start if svc.name == "mirrormaker"],
                ):
                    batch: list[Service] = []
                    for svc in sorted(phase, key=_start_order):
                        launch = svc.prepare(cache)
                        pid = spawn(launch, self._mark(svc))
                        state[svc.name] = {"pid": pid, "mark": self._mark(svc), "started_at": time.time()}
                        self._write_state(state)
                        started.append(svc)
                        batch.append(svc)
                        self._progress(f"started {svc.name} (pid {pid}, port {svc.client_port}, log {svc.log})")
                    result.ready_after_s.update(self._await_ready(batch, state, began))
            except BaseException:
                self._progress("start failed; stopping what this call started")
                for svc in reversed(started):
                    entry = state.pop(svc.name)
                    stop(entry["pid"], entry["mark"], _STOP_GRACE_S)
                self._write_state(state)
                raise
            result.started = [svc.name for svc in started]
        result.elapsed_s = time.monotonic() - began
        self._progress(f"stack up in {result.elapsed_s:.1f}s")
        return result

    def down(self) -> list[str]:
        """Stop the processes this stack recorded, gently first; returns the names it stopped."""
        stopped = []
        with self._locked():
            state = self._read_state()
            for name in reversed(self.names):
                entry = state.get(name)
                if entry is None:
                    continue
                if is_ours(entry["pid"], entry["mark"]):
                    self._progress(f"stopping {name} (pid {entry['pid']})")
                    killed = stop(entry["pid"], entry["mark"], _STOP_GRACE_S)
                    if killed:
                        self._progress(f"  {name} ignored SIGTERM for {_STOP_GRACE_S:.0f}s and was killed")
                    stopped.append(name)
                else:
                    stop(entry["pid"], entry["mark"], 0.0)  # stray children of a dead leader, if any
                del state[name]
                self._write_state(state)
        return stopped

    def status(self) -> list[ServiceStatus]:
        state = self._read_state()
        statuses = []
        for svc in self._services():
            entry = state.get(svc.name)
            running = bool(entry) and is_ours(entry["pid"], entry["mark"])  # type: ignore[index]
            statuses.append(
                ServiceStatus(
                    name=svc.name,
                    pid=entry["pid"] if running and entry else None,
                    port=svc.client_port,
                    endpoint=svc.endpoint(),
                    running=running,
                    healthy=running and svc.ready(),
                    log=svc.log,
                )
            )
        return statuses

    def pids(self) -> dict[str, int]:
        state = self._read_state()
        return {name: e["pid"] for name, e in state.items() if name in self.names and is_ours(e["pid"], e["mark"])}

    def signal_service(self, name: str, signum: int) -> list[int]:
        """Send ``signum`` to every process of one service (its launcher and children), by their pids.
        SIGSTOP/SIGCONT freeze and thaw a service for outage tests. Returns the pids signalled."""
        state = self._read_state()
        entry = state.get(name)
        if entry is None or not is_ours(entry["pid"], entry["mark"]):
            raise StackError(f"{name} is not running in this stack")
        pids = members(entry["pid"], entry["mark"])
        for pid in pids:
            os.kill(pid, signum)
        return pids

    def log_tail(self, name: str, lines: int = 40) -> str:
        return log_tail(self._service(name).log, lines)

    def endpoints(self) -> Endpoints:
        s = self.settings
        scheme = "https" if self.secure else "http"
        endpoints = Endpoints(
            kafka_bootstrap=f"{HOST}:{s.kafka_port}",
            cassandra_host=HOST,
            cassandra_port=s.cassandra_port,
            elasticsearch_url=f"{scheme}://{HOST}:{s.elasticsearch_port}",
            sqs=None if self.secure else SqsAccess(f"http://{HOST}:{s.sqs_port}", static_credentials=True),
        )
        if self.secure:
            endpoints = replace(endpoints, security=secured.client_security(self.secrets))
        return endpoints

    def region_endpoints(self) -> dict[str, dict[str, str]]:
        """Both regions of a two-region stack, as ``WALSTREAM_REGION_ENDPOINTS`` takes them: each its own Kafka;
        the second region's stores a keyspace and index of their own (suffix ``_west``) on the same servers."""
        s = self.settings
        scheme = "https" if self.secure else "http"
        shared = {
            "cassandra_contact": f"{HOST}:{s.cassandra_port}",
            "elasticsearch_url": f"{scheme}://{HOST}:{s.elasticsearch_port}",
        }
        east, west = LOCAL_REGIONS
        return {
            east: {"kafka_bootstrap": f"{HOST}:{s.kafka_port}", **shared, "store_suffix": ""},
            west: {"kafka_bootstrap": f"{HOST}:{s.kafka_west_port}", **shared, "store_suffix": f"_{west}"},
        }

    def client_env(self, region: str | None = None) -> dict[str, str]:
        """The ``WALSTREAM_*`` variables with which another process uses this stack as an external one.
        Passwords are given as the files that hold them (``..._PASSWORD_FILE``), never as values. With
        ``region`` (a two-region stack), the process runs in that region: its Kafka, its stores' suffix, and
        every region's endpoints."""
        s = self.settings
        scheme = "https" if self.secure else "http"
        env = {
            "WALSTREAM_STACK_MODE": "external",
            "WALSTREAM_KAFKA_BOOTSTRAP": f"{HOST}:{s.kafka_port}",
            "WALSTREAM_CASSANDRA_CONTACT": f"{HOST}:{s.cassandra_port}",
            "WALSTREAM_ELASTICSEARCH_URL": f"{scheme}://{HOST}:{s.elasticsearch_port}",
            "WALSTREAM_SQS_ENDPOINT": f"http://{HOST}:{s.sqs_port}",
        }
        if region is not None:
            regions = self.region_endpoints()
            if region not in regions:
                raise StackError(f"region {region!r} is not one of the local stack's regions ({', '.join(regions)})")
            env["WALSTREAM_KAFKA_BOOTSTRAP"] = regions[region]["kafka_bootstrap"]
            env["WALSTREAM_REGION"] = region
            env["WALSTREAM_REGION_ENDPOINTS"] = json.dumps(regions, separators=(",", ":"))
        if self.secure:
            del env["WALSTREAM_SQS_ENDPOINT"]
            env.update(secured.client_security_env(self.secrets))
        return env

    # -- internals --------------------------------------------------------------------------------

    def _await_ready(self, services: list[Service], state: dict[str, StateEntry], began: float) -> dict[str, float]:
        deadline = time.monotonic() + self.settings.start_timeout_s
        waiting = {svc.name: svc for svc in services}
        ready_after: dict[str, float] = {}
        last_note = time.monotonic()
        while waiting:
            for name, svc in list(waiting.items()):
                if not alive(state[name]["pid"]):
                    raise describe_failure(svc, "exited during start-up")
                if port_open(svc.client_port) and svc.setup() and svc.ready():
                    ready_after[name] = time.monotonic() - began
                    self._progress(f"{name} ready after {ready_after[name]:.1f}s")
                    del waiting[name]
            if not waiting:
                break
            if time.monotonic() > deadline:
                slow = next(iter(waiting.values()))
                raise describe_failure(
                    slow, f"was not ready after {self.settings.start_timeout_s:.0f}s (WALSTREAM_START_TIMEOUT)"
                )
            if time.monotonic() - last_note > 15:
                self._progress(f"  waiting for {', '.join(waiting)} ({time.monotonic() - began:.0f}s)")
                last_note = time.monotonic()
            time.sleep(1.0)
        return ready_after

    def _services(self) -> list[Service]:
        if self._java is None:
            self._java = find_java(versions.JAVA_FEATURE_VERSION, self.settings.java_home)
        return [svc for svc in all_services(self.settings, self._java) if svc.name in self.names]

    def _service(self, name: str) -> Service:
        for svc in self._services():
            if svc.name == name:
                return svc
        raise StackError(f"unknown service {name!r}; the stack has {self.names}")

    def _check_security(self) -> None:
        recorded = _recorded_security(self.settings.stack_dir)
        if recorded is None or recorded == self._asked_secure:
            return
        made, asked = ("a secured", "an open") if recorded else ("an open", "a secured")
        flag = "with --secure (or WALSTREAM_STACK_SECURE=true)" if recorded else "without --secure"
        raise StackError(
            f"{self.settings.stack_dir} holds {made} stack's data, which {asked} stack cannot use; nothing was "
            f"started. Start it {flag}, or stop it (`walstream stack down`) and delete that folder (its topics, "
            "tables and indices are lost), or point WALSTREAM_STACK_DIR elsewhere."
        )

    def _mark(self, svc: Service) -> str:
        return f"{self.settings.stack_dir.resolve()}#{svc.name}"

    def _check_disk(self) -> None:
        self.settings.stack_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.settings.stack_dir).free
        if free < _MIN_FREE_BYTES:
            raise DiskFull(
                f"only {free >> 20} MiB free in {self.settings.stack_dir}; the stack needs at least "
                f"{_MIN_FREE_BYTES >> 30} GiB. Free some space or set WALSTREAM_STACK_DIR."
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.settings.stack_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.settings.stack_dir, 0o755)
        with (self.settings.stack_dir / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, StateEntry]:
        try:
            data = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise StackError(f"{self._state_path} is corrupt ({exc}); stop the stack's processes by hand") from exc
        return data if isinstance(data, dict) else {}

    def _write_state(self, state: dict[str, StateEntry]) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self._state_path)


_SECURITY_FILE = "security"


def _recorded_security(stack_dir: Path) -> bool | None:
    """True or False when the stack dir's data was made for a secured or an open stack; None when it has none.
    A stack dir from before this file existed, with data in it, is an open one."""
    try:
        return (stack_dir / _SECURITY_FILE).read_text().strip() == "secured"
    except FileNotFoundError:
        pass
    if any((stack_dir / name / "data").exists() for name in SERVICE_NAMES):
        return False
    return None


def _recorded_regions(stack_dir: Path) -> bool:
    """True when the stack dir's state records a second region's process."""
    try:
        state = json.loads((stack_dir / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and any(name in state for name in REGION_SERVICE_NAMES)


def scratch_settings(settings: LocalStackSettings, secure: bool, prefix: str) -> LocalStackSettings:
    """The settings of a stack of its own (a bench's, a test's): a fresh folder under /tmp and free ports, the
    rest (cache, heaps, Java) as ``settings`` say. The folder is not under a private temp folder because
    Elasticsearch runs as an unprivileged user when root starts the stack, and that user has to reach it. The
    caller removes ``stack_dir.parent`` once the stack is down."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    kafka, controller, cassandra, storage, es, transport, sqs, west, west_controller = free_ports(9)
    return settings.model_copy(
        update={
            "stack_dir": base / "stack",
            "secure": secure,
            "kafka_port": kafka,
            "kafka_controller_port": controller,
            "cassandra_port": cassandra,
            "cassandra_storage_port": storage,
            "elasticsearch_port": es,
            "elasticsearch_transport_port": transport,
            "sqs_port": sqs,
            "kafka_west_port": west,
            "kafka_west_controller_port": west_controller,
        }
    )


def _record_security(stack_dir: Path, secure: bool) -> None:
    (stack_dir / _SECURITY_FILE).write_text("secured\n" if secure else "open\n")


def _start_order(svc: Service) -> int:
    # The slowest starter goes first so the three overlap as much as possible.
    return {"cassandra": 0, "elasticsearch": 1, "kafka": 2, "elasticmq": 3, "kafka-west": 4, "mirrormaker": 5}[svc.name]
