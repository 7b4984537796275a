"""Helpers for end-to-end tests: a throwaway namespace, a real worker process, and reconciliation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cassandra.cluster import Session
from elasticsearch import Elasticsearch
from elasticsearch.helpers import scan

from connectors.elasticsearch.generations import drop_target_index
from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.local.errors import StackError
from connectors.local.stack import SERVICE_NAMES, LocalStack, scratch_settings
from streams.config import LocalStackSettings
from streams.model import Op, WalEntry
from streams.namespaces import Namespace, load_namespace
from streams.worker.targets import apply_namespaces

REPO = Path(__file__).resolve().parents[2]


def namespace_document(name: str, partitions: int = 3, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "partitions": partitions,
        "payload": {"format": "json"},
        "targets": {
            "primary": {
                "type": "cassandra",
                "keyspace": name,
                "table": "items",
                "key_column": "id",
                "columns": {"color": {"type": "text"}, "qty": {"type": "bigint"}},
            },
            "search": {
                "type": "elasticsearch",
                "index": name.replace("_", "-"),
                "fields": {"color": "keyword", "qty": "long"},
            },
        },
        # Open to any API caller: these namespaces test the pipeline, not who may write.
        "authorization": {"producers": ["*"], "deleters": ["*"]},
    }
    doc.update(overrides)
    return doc


@dataclass
class ScratchNamespace:
    namespace: Namespace
    directory: Path
    endpoints: Endpoints

    @property
    def name(self) -> str:
        return self.namespace.name

    @property
    def keyspace(self) -> str:
        return self.name

    @property
    def index(self) -> str:
        return self.name.replace("_", "-")

    def drop(self, session: Session, es: Elasticsearch) -> None:
        admin = KafkaAdmin(self.endpoints.kafka)
        internal = [t for t in admin._admin.list_topics(timeout=10).topics if t.startswith(f"walstream.{self.name}-")]
        outboxes = [t.topic for t in self.namespace.targets_of_type("kafka").values()]
        admin.delete_topics([*self.namespace.topics(), *internal, *outboxes])
        session.execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}")
        drop_target_index(es, self.index)


def create_namespace(endpoints: Endpoints, directory: Path, partitions: int = 3, **overrides: Any) -> ScratchNamespace:
    name = f"t{uuid.uuid4().hex[:10]}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(namespace_document(name, partitions, **overrides)))
    ns = load_namespace(path)
    asyncio.run(apply_namespaces([ns], endpoints))
    return ScratchNamespace(ns, directory, endpoints)


@dataclass
class WorkerProcess:
    """A real `walstream worker` process for one namespace, stopped by its own pid."""

    ns: ScratchNamespace
    data_dir: Path
    log: Path
    metrics_port: int | None = None
    role: str = "all"
    extra_args: tuple[str, ...] = ()
    #: More settings, on top of the endpoints' (a secured cluster's credentials as files).
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self) -> WorkerProcess:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
            "WALSTREAM_NAMESPACE_DIR": str(self.ns.directory),
            "WALSTREAM_DATA_DIR": str(self.data_dir),
            "WALSTREAM_STACK_MODE": "external",
            "WALSTREAM_KAFKA_BOOTSTRAP": self.ns.endpoints.kafka_bootstrap,
            "WALSTREAM_CASSANDRA_CONTACT": f"{self.ns.endpoints.cassandra_host}:{self.ns.endpoints.cassandra_port}",
            "WALSTREAM_ELASTICSEARCH_URL": self.ns.endpoints.elasticsearch_url,
            **self.env,
        }
        self.starts += 1
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streams",
                    "worker",
                    "--namespaces",
                    self.ns.name,
                    "--role",
                    self.role,
                    *(["--metrics-port", str(self.metrics_port)] if self.metrics_port else []),
                    *self.extra_args,
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no final commit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ApiRun:
    """A `walstream api` process: the port it serves on, its output (all of it once the process stopped), and the
    process itself."""

    port: int
    lines: list[str]
    process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@contextmanager
def api_process(env: dict[str, str], *args: str) -> Iterator[ApiRun]:
    """Run `walstream api --port 0 [args]` with ``env``; yields once it says where it serves (its output is read
    on meanwhile), stops it by its own pid."""
    api = subprocess.Popen(
        [sys.executable, "-m", "streams", "api", "--port", "0", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = None
    try:
        assert api.stdout is not None
        for line in api.stdout:
            lines.append(line)
            if "walstream API serving on" in line:
                reader = threading.Thread(target=lines.extend, args=(api.stdout,), daemon=True)
                reader.start()
                yield ApiRun(int(line.rsplit(":", 1)[1]), lines, api)
                break
        else:
            raise AssertionError("the API exited before serving:\n" + "".join(lines))
    finally:
        api.terminate()
        try:
            api.wait(timeout=90)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait(timeout=30)
        if reader is not None:
            reader.join(timeout=10)
        elif api.stdout is not None:
            lines.append(api.stdout.read())


@contextmanager
def own_stack(
    settings: LocalStackSettings,
    prefix: str,
    services: Sequence[str] = SERVICE_NAMES,
    secure: bool = False,
    progress: Callable[[str], None] = lambda _message: None,
) -> Iterator[LocalStack]:
    """A stack of a test's own (``services`` of it) on free ports in a fresh folder, never the shared one. At the
    end it is thawed (a test may have frozen it), stopped by its own ``down()``, and its folder removed."""
    local = scratch_settings(settings, secure, prefix)
    stack = LocalStack(local, services=services, progress=progress)
    try:
        stack.up()
        yield stack
    finally:
        for name in services:
            with contextlib.suppress(StackError, ProcessLookupError):
                stack.signal_service(name, signal.SIGCONT)
        stack.down()
        shutil.rmtree(local.stack_dir.parent, ignore_errors=True)


def model_of(entries: Iterable[WalEntry]) -> dict[str, dict[str, Any] | None]:
    """Last writer wins by sequence: the state every target must converge to."""
    import json

    newest: dict[str, WalEntry] = {}
    for e in entries:
        if e.key not in newest or e.sequence > newest[e.key].sequence:
            newest[e.key] = e
    return {k: None if e.op is Op.DELETE else json.loads(e.payload) for k, e in newest.items()}


def cassandra_rows(session: Session, keyspace: str) -> dict[str, tuple[Any, ...]]:
    return {r.id: (r.color, r.qty) for r in session.execute(f"SELECT id, color, qty FROM {keyspace}.items")}


def es_docs(es: Elasticsearch, index: str) -> dict[str, tuple[Any, ...]]:
    es.indices.refresh(index=index)
    return {
        hit["_id"]: (hit["_source"]["color"], hit["_source"]["qty"])
        for hit in scan(es, index=index, query={"query": {"match_all": {}}}, size=5000)
    }


def expected_rows(model: dict[str, dict[str, Any] | None]) -> dict[str, tuple[Any, ...]]:
    return {k: (v["color"], v["qty"]) for k, v in model.items() if v is not None}


def free_port() -> int:
    """A port nobody listens on right now (for a worker's metrics endpoint)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, on_timeout: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")


def delivery_lateness(
    consumer: Any, entries: Sequence[WalEntry], timeout: float, on_timeout: Callable[[], str] = lambda: ""
) -> tuple[dict[str, int], dict[str, int], list[int]]:
    """Reads the outbox ``consumer`` until every entry's key arrived (first arrival counts): each key's due time
    and arrival time in ms, and the lateness of each (arrival - due), ascending. A negative one was early."""
    from streams.core.schedule import due_ms

    due = {e.key: due_ms(e) or e.lifecycle.original_write_time // 1000 for e in entries}
    delivered: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(delivered) < len(entries) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        delivered.setdefault(msg.key().decode(), msg.timestamp()[1])
    assert len(delivered) == len(entries), on_timeout()
    return due, delivered, sorted(delivered[k] - due[k] for k in due)
