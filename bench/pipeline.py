"""End-to-end throughput of the fan-out pipeline against raw bounds measured in the same run on the same stack.

    .venv/bin/python bench/pipeline.py [--entries N] [--secure | --own-stack]
    .venv/bin/python bench/pipeline.py --only produce [--rounds R] [--profile-sdk FILE]

What it measures (DESIGN.md, "How we measure"):

* raw bounds, same payloads and versioning as the sinks use:
  - confluent-kafka produce (the SDK's producer settings: acks=all, idempotence, lz4) and consume of N WAL
    records from a scratch topic (median of 3 rounds: one round lasts only tens of milliseconds);
  - the SDK's produce, compared with the raw produce like with like: the same N documents written through a
    ``WalWriter`` (validated, encoded, each answered with its own durable Delivery), alone on the machine as the raw
    bound is, its rounds alternating with the raw ones (``--only produce`` measures just these two, in seconds);
  - Cassandra: a prepared ``INSERT ... USING TIMESTAMP ?`` through ``execute_concurrent_with_args``;
  - Elasticsearch: ``_bulk`` (``helpers.bulk``, external versions) in batches of 1000;
* the pipeline: a fresh namespace (Cassandra + Elasticsearch targets), a ``walstream worker`` subprocess, N
  unique-key upserts written through the async SDK with many writes in flight. The clock runs from the first
  write until the N-th change event shows up on ``wal.<ns>.cdc`` (the worker publishes it only once every target
  holds the entry); afterwards the Cassandra row count and the Elasticsearch document count must both be N.

It prints a table and one JSON line (prefixed ``BENCH_JSON``), and removes everything it created: topics,
keyspace, indices, the worker's Faust topics and consumer groups, and its temporary folder. The worker is stopped
by its pid (SIGTERM, then SIGKILL after 20 s), also on error or Ctrl-C.

Every client (raw bounds included) is built by the project's builders from ``endpoints.security``, so a secured
stack is measured with its TLS and passwords, and the worker processes get the same settings. ``--secure`` starts
a secured embedded stack of the bench's own (free ports, a folder under /tmp), measures on it and stops it with
its ``down()``; ``--own-stack`` does the same with an open one, the control that separates the cost of TLS from
that of a freshly started stack. Neither touches the shared stack.

Exit status: 0 the pipeline reaches the target ratio, 1 it does not, 2 error (the message says what), 3 the
figures are not valid because a stack service was stopped (SIGSTOP) by someone else while measuring.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from cassandra import DriverException  # noqa: E402
from cassandra.cluster import Cluster, NoHostAvailable, Session  # noqa: E402
from cassandra.concurrent import execute_concurrent_with_args  # noqa: E402
from cassandra.query import SimpleStatement  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from elasticsearch import ApiError, Elasticsearch, helpers  # noqa: E402
from elasticsearch import TransportError as EsTransportError  # noqa: E402

from connectors.cassandra.sink import CassandraSink, new_cluster  # noqa: E402
from connectors.elasticsearch.client import new_client  # noqa: E402
from connectors.elasticsearch.generations import drop_target_index  # noqa: E402
from connectors.elasticsearch.sink import ElasticsearchSink  # noqa: E402
from connectors.endpoints import Endpoints, KafkaAccess  # noqa: E402
from connectors.kafka.admin import KafkaAdmin, TopicSpec  # noqa: E402
from connectors.kafka.config import admin_config, client_config, producer_config  # noqa: E402
from connectors.local.errors import StackError  # noqa: E402
from connectors.sqs.client import local_access  # noqa: E402
from streams import topics  # noqa: E402
from streams.client.sdk import WalWriter  # noqa: E402
from streams.codec import Codec  # noqa: E402
from streams.config import ConfigError, KafkaProtocol, StackMode, load_settings  # noqa: E402
from streams.model import Op, new_entry  # noqa: E402
from streams.namespaces import Namespace, load_namespace  # noqa: E402
from streams.payload import PayloadCodec  # noqa: E402
from streams.ports import Durable  # noqa: E402
from streams.worker.targets import Connections, apply_namespaces  # noqa: E402

if TYPE_CHECKING:
    from connectors.local.stack import LocalStack

STATUSES = ("new", "paid", "shipped", "cancelled")
CASSANDRA_TARGET = "primary"
ES_TARGET = "search"
WARMUP_KEYS = 12  # spread over the partitions so every partition is assigned and has run once
STOP_GRACE_S = 20.0


class BenchError(RuntimeError):
    """Something the operator must fix or look at; the message says what."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- workload ----------------------------------------------------------------------------------------------------------


def document(i: int) -> dict[str, Any]:
    """The payload of entry ``i``; every phase writes exactly these documents."""
    return {
        "customer": f"customer-{i % 997:04d}",
        "status": STATUSES[i % len(STATUSES)],
        "amount": (i * 37 % 100_000) / 100,
    }


def key_of(i: int) -> str:
    return f"e-{i:08d}"


def namespace_document(name: str, suffix: str, partitions: int) -> dict[str, Any]:
    return {
        "name": name,
        "partitions": partitions,
        "persona": "fanout",
        "payload": {"format": "json"},
        "targets": {
            CASSANDRA_TARGET: {
                "type": "cassandra",
                "keyspace": f"bench_{suffix}",
                "table": "items",
                "key_column": "id",
                "columns": {"customer": {"type": "text"}, "status": {"type": "text"}, "amount": {"type": "double"}},
            },
            ES_TARGET: {
                "type": "elasticsearch",
                "index": f"bench-{suffix}",
                "fields": {"customer": "keyword", "status": "keyword", "amount": "double"},
            },
        },
    }


def scratch_namespace(folder: Path, name: str, suffix: str, partitions: int) -> Namespace:
    """A namespace of the bench's shape, loaded from a file in ``folder`` (only its log topic is ever created)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(namespace_document(name, suffix, partitions), sort_keys=False))
    return load_namespace(path)


# -- stack -------------------------------------------------------------------------------------------------------------


def resolve_endpoints() -> tuple[Endpoints, dict[str, int]]:
    """The configured stack's endpoints (and the local stack's pids); never starts anything."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise BenchError(str(exc)) from None
    if settings.mode is StackMode.EXTERNAL:
        ext = settings.external
        host, _, port = ext.cassandra_contact.rpartition(":")
        sqs = local_access(settings.sqs.endpoint, settings.sqs.region)
        return Endpoints(
            ext.kafka_bootstrap, host, int(port), ext.elasticsearch_url, settings.client_security(), sqs
        ), {}
    if settings.mode is not StackMode.LOCAL:
        raise BenchError(f"WALSTREAM_STACK_MODE={settings.mode.value} is not supported here; use local or external")
    from connectors.local.stack import LocalStack

    stack = LocalStack(settings.local)
    pids = stack.pids()
    missing = [name for name in stack.names if name not in pids]
    if missing:
        raise BenchError(
            f"the local stack is not running ({', '.join(missing)} down); start it with `walstream stack up`"
        )
    return stack.endpoints(), pids


@contextlib.contextmanager
def own_stack(secure: bool) -> Iterator[tuple[LocalStack, float]]:
    """An embedded stack of the bench's own on free ports in a fresh folder under /tmp; the shared stack is not
    touched. ``--secure``: secured (TLS + SCRAM Kafka, TLS + password Cassandra, https + basic auth Elasticsearch);
    ``--own-stack`` alone: open, the control for ``--secure`` (just as freshly started, next to the same load).
    Yields the stack and how long it took to start. Always stopped by its own ``down()`` and its folder removed,
    also after an error or Ctrl-C."""
    from connectors.local.stack import LocalStack, scratch_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise BenchError(str(exc)) from None
    kind = "secured" if secure else "open"
    local = scratch_settings(settings.local, secure, prefix=f"walstream-bench-{kind}-")
    base = local.stack_dir.parent
    stack = LocalStack(local, progress=lambda message: say(f"  [own stack] {message}"))
    say(
        f"starting the bench's own {kind} stack in {base} (Kafka {local.kafka_port}, Cassandra {local.cassandra_port}, "
        f"Elasticsearch {local.elasticsearch_port})"
    )
    started = time.monotonic()
    try:
        stack.up()
        elapsed = time.monotonic() - started
        say(f"own {kind} stack up in {elapsed:.1f} s (start-up is not part of any figure)")
        yield stack, elapsed
    finally:
        say(f"stopping the bench's own {kind} stack")
        # A second Ctrl-C (or SIGTERM) must not leave three servers running: down() finishes first.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            stopped = stack.down()
        except Exception as exc:  # noqa: BLE001 - the folder stays for `walstream stack down`, the message says so
            say(
                f"  could not stop the {kind} stack: {type(exc).__name__}: {exc}; stop it with "
                f"WALSTREAM_STACK_DIR={local.stack_dir} walstream stack down, then remove {base}"
            )
        else:
            say(f"  stopped {', '.join(stopped) or 'nothing'}; removing {base}")
            shutil.rmtree(base, ignore_errors=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def describe_security(endpoints: Endpoints) -> str:
    """What the clients use to reach each service, or '' when the stack is open."""
    sec = endpoints.security
    parts = []
    if sec.kafka.protocol is not KafkaProtocol.PLAINTEXT:
        how = sec.kafka.protocol.value + (f" {sec.kafka.sasl_mechanism.value}" if sec.kafka.username else "")
        parts.append(f"Kafka {how}")
    cassandra = [name for name, on in (("TLS", sec.cassandra.tls), ("password", sec.cassandra.username)) if on]
    if cassandra:
        parts.append("Cassandra " + " + ".join(cassandra))
    es = [
        name
        for name, on in (
            ("https", endpoints.elasticsearch_url.startswith("https://")),
            ("basic auth", sec.elasticsearch.username),
            ("API key", sec.elasticsearch.api_key),
        )
        if on
    ]
    if es:
        parts.append("Elasticsearch " + " + ".join(es))
    return ", ".join(parts)


def probe(endpoints: Endpoints) -> None:
    """Fail early, naming the service, when one of the three does not answer."""
    try:
        AdminClient(admin_config(endpoints.kafka)).list_topics(timeout=10)
    except KafkaException as exc:
        raise BenchError(f"Kafka at {endpoints.kafka_bootstrap} does not answer: {exc}") from None
    try:
        cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port, security=endpoints.security.cassandra)
        cluster.connect().execute("SELECT release_version FROM system.local")
        cluster.shutdown()
    except (NoHostAvailable, DriverException, OSError) as exc:
        where = f"{endpoints.cassandra_host}:{endpoints.cassandra_port}"
        raise BenchError(f"Cassandra at {where} does not answer: {exc}") from None
    es = new_client(endpoints.elasticsearch_url, endpoints.security.elasticsearch, request_timeout=10)
    try:
        es.cluster.health(timeout="10s")
    except (EsTransportError, ApiError, OSError) as exc:
        raise BenchError(f"Elasticsearch at {endpoints.elasticsearch_url} does not answer: {exc}") from None
    finally:
        es.close()


# -- CPU accounting (from /proc: no profiler needed) -------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy (every core), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def with_descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


class CpuMeter:
    """CPU seconds of named process groups between two snapshots."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.result: dict[str, float] = {}  # name -> average cores busy

    def _read(self) -> dict[str, float]:
        figures = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}
        figures["machine"] = machine_busy_seconds()
        return figures

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        end = self._read()
        self.result = {name: (end[name] - self._start[name]) / wall for name in end}
        return self.result


def process_state(pid: int) -> str:
    """The one-letter state of a process (R, S, D, T for stopped...); '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


class PeakSampler(threading.Thread):
    """Samples the workers' CPU once a second; the peak one-second figure shows whether they saturate a core."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(name="bench-cpu-sampler", daemon=True)
        self.pids = pids
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        last_t, last_cpu = time.perf_counter(), sum(cpu_seconds(p) for p in self.pids)
        while not self._halt.wait(1.0):
            now, cpu = time.perf_counter(), sum(cpu_seconds(p) for p in self.pids)
            self.samples.append((cpu - last_cpu) / (now - last_t))
            last_t, last_cpu = now, cpu

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=3)


class StackWatch(threading.Thread):
    """Notes, per phase, how long a stack service was stopped (SIGSTOP, as failure tests on a shared stack do):
    a figure measured while a service was frozen says nothing about walstream."""

    INTERVAL_S = 0.5

    def __init__(self, services: dict[str, list[int]]) -> None:
        super().__init__(name="bench-stack-watch", daemon=True)
        self.services = services
        self.phase = "setup"
        self.frozen: dict[str, dict[str, float]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.INTERVAL_S):
            for name, pids in self.services.items():
                if any(process_state(p) == "T" for p in pids):
                    per_phase = self.frozen.setdefault(self.phase, {})
                    per_phase[name] = per_phase.get(name, 0.0) + self.INTERVAL_S

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=3)


# -- the CDC counter ---------------------------------------------------------------------------------------------------


class CdcCounter(threading.Thread):
    """Reads ``wal.<ns>.cdc`` from the beginning and notes when each key's change events arrive."""

    def __init__(self, kafka: KafkaAccess, topic: str, partitions: int, bench_prefix: bytes) -> None:
        super().__init__(name="bench-cdc-counter", daemon=True)
        self._consumer = Consumer(
            {
                **client_config(kafka),
                "group.id": f"bench-cdc-{secrets.token_hex(4)}",  # assign() below: no group is ever joined
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "fetch.min.bytes": 1,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self._prefix = bench_prefix
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.events: dict[bytes, int] = {}  # key -> change events seen
        self.bench_arrivals: list[float] = []  # perf_counter of each first event of a bench key
        self.error: str | None = None

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                for msg in self._consumer.consume(num_messages=1000, timeout=0.05):
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise KafkaException(error)
                    now = time.perf_counter()
                    key = msg.key() or b""
                    with self._lock:
                        seen = self.events.get(key, 0)
                        self.events[key] = seen + 1
                        if seen == 0 and key.startswith(self._prefix):
                            self.bench_arrivals.append(now)
        except Exception as exc:  # noqa: BLE001 - reported to the main thread, which stops the run
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._consumer.close()

    def count(self, key: bytes) -> int:
        with self._lock:
            return self.events.get(key, 0)

    def bench_seen(self) -> int:
        with self._lock:
            return len(self.bench_arrivals)

    def total_events(self) -> int:
        with self._lock:
            return sum(self.events.values())

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


# -- the worker subprocess ---------------------------------------------------------------------------------------------


class WorkerProcess:
    def __init__(
        self,
        namespace: str,
        namespace_dir: Path,
        data_dir: Path,
        log: Path,
        profile: Path | None = None,
        stack_env: Mapping[str, str] | None = None,
    ) -> None:
        """``stack_env``: the ``WALSTREAM_*`` variables that say where the stack is and how to reach it (its
        ``client_env()``: external mode, passwords as files); they replace any the bench inherited. Without it
        the worker finds the stack as the bench did, from the inherited settings."""
        self.namespace = namespace
        self.log = log
        self._args = (namespace, namespace_dir, data_dir, log, None, stack_env)
        # `python -m streams` is the `walstream` command; run it from this checkout (cwd and PYTHONPATH), so the
        # worker runs the same code as the bench whichever tree the venv was installed from.
        argv = [sys.executable, "-m", "streams"]
        if profile is not None:  # cProfile writes the file when the worker exits on SIGTERM
            argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "streams"]
        env = {
            **(os.environ if stack_env is None else worker_base_env(os.environ)),
            **(stack_env or {}),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "WALSTREAM_NAMESPACE_DIR": str(namespace_dir),
            "WALSTREAM_DATA_DIR": str(data_dir),
        }
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "worker", "--namespaces", namespace],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only the bench, which stops the worker
            )
        self.pid = self.proc.pid

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"the worker (pid {self.pid}) exited with code {code}; its log ends with:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self) -> str:
        """SIGTERM, then SIGKILL after the grace period; only this pid is ever signalled."""
        if self.proc.poll() is not None:
            return f"already exited ({self.proc.returncode})"
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_GRACE_S)
            return f"stopped by SIGTERM (exit {code})"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            return f"ignored SIGTERM for {STOP_GRACE_S:.0f}s and was killed"

    def kill_and_restart(self) -> WorkerProcess:
        """SIGKILL (no shutdown, nothing committed on the way out), then start it again at once."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return WorkerProcess(*self._args)


#: The settings a worker keeps from the bench's environment when it is given a stack's own client env: what it
#: runs, not where the stack is or which credentials it takes.
_WORKER_OWN_SETTINGS = (
    "WALSTREAM_CACHE_DIR",
    "WALSTREAM_REPLICATION_FACTOR",
    "WALSTREAM_TOOLS_DIR",
    "WALSTREAM_METRICS_HOST",
)


def worker_base_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The bench's environment without its ``WALSTREAM_*`` stack, endpoint and security settings (an outer
    password would clash with the stack's password file, an outer address would point elsewhere)."""
    return {k: v for k, v in environ.items() if not k.startswith("WALSTREAM_") or k in _WORKER_OWN_SETTINGS}


class WorkerGroup:
    """The worker processes of one run (one consumer group); they share the namespace's partitions."""

    def __init__(self, members: list[WorkerProcess]) -> None:
        self.members = members

    def kill_and_restart(self, index: int = 0) -> None:
        self.members[index] = self.members[index].kill_and_restart()

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members]

    def check_alive(self) -> None:
        for member in self.members:
            member.check_alive()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(f"  worker pid {m.pid}:\n{m.tail(lines)}" for m in self.members)


def wait_for_group(kafka: KafkaAccess, group: str, members: int, workers: WorkerGroup, timeout: float) -> None:
    """Until the consumer group is stable with every worker in it (a late joiner would rebalance mid-run)."""
    admin = AdminClient(admin_config(kafka))
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        workers.check_alive()
        try:
            description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
            state = f"{description.state}, {len(description.members)} members"
            if str(description.state).endswith("STABLE") and len(description.members) == members:
                return
        except KafkaException as exc:
            state = str(exc)
        time.sleep(0.5)
    raise BenchError(f"consumer group {group} did not settle with {members} workers ({state})")


# -- raw bounds --------------------------------------------------------------------------------------------------------


def wal_records(ns: Namespace, n: int) -> list[tuple[bytes, bytes]]:
    """N encoded WAL records, exactly what the SDK writes for these documents."""
    codec, payloads = Codec(), PayloadCodec(ns.payload)
    out = []
    for i in range(n):
        entry = new_entry(ns.name, key_of(i), Op.UPSERT, payloads.encode(document(i)))
        out.append((entry.key.encode(), codec.encode_entry(entry)))
    return out


def raw_produce_round(producer: Producer, topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Seconds to produce the records and have every one acknowledged (acks=all)."""
    failures: list[str] = []

    def report(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    started = time.perf_counter()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) or failures:
        raise BenchError(f"raw produce to {topic} failed: {failures[:1] or 'flush timed out'}")
    return time.perf_counter() - started


def raw_kafka(
    kafka: KafkaAccess,
    topic: str,
    partitions: int,
    records: Sequence[tuple[bytes, bytes]],
    rounds: int = 3,
    produce: bool = True,
) -> dict[str, float]:
    """Produce the N records ``rounds`` times (unless ``produce`` is off: they are in the topic already), then
    consume N records ``rounds`` times (each with a fresh consumer); the median round counts: one round of 20000
    small records takes only tens of milliseconds."""
    figures: dict[str, float] = {}
    if produce:
        KafkaAdmin(kafka).ensure_topics([TopicSpec(topic, partitions)])
        producer = Producer(producer_config(kafka))
        producer.list_topics(topic, timeout=10)  # connect and learn the leaders before the clock starts
        figures["produce_s"] = statistics.median(raw_produce_round(producer, topic, records) for _ in range(rounds))

    probe_consumer = Consumer({**client_config(kafka), "group.id": f"bench-raw-{secrets.token_hex(4)}"})
    try:
        marks = [probe_consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(partitions)]
    finally:
        probe_consumer.close()
    # The same keys land on the same partitions every round, so round r starts at low + r * (per-round count).
    per_round = [(high - low) // rounds for low, high in marks]
    consume_times, size, got = [], 0, 0
    for r in range(rounds):
        consumer = Consumer(
            {
                **client_config(kafka),
                "group.id": f"bench-raw-{secrets.token_hex(4)}",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.list_topics(topic, timeout=10)  # connected before the clock starts
            got, size = 0, 0
            deadline = time.monotonic() + 120
            started = time.perf_counter()
            consumer.assign([TopicPartition(topic, p, marks[p][0] + r * per_round[p]) for p in range(partitions)])
            while got < len(records):
                if time.monotonic() > deadline:
                    raise BenchError(f"raw consume read only {got} of {len(records)} records from {topic} in 120 s")
                for msg in consumer.consume(num_messages=1000, timeout=1.0):
                    if msg.error() is None:
                        got += 1
                        size += len(msg.value() or b"")
            consume_times.append(time.perf_counter() - started)
        finally:
            consumer.close()
    figures["consume_s"] = statistics.median(consume_times)
    figures["avg_record_bytes"] = size / max(got, 1)
    return figures


def raw_cassandra(session: Session, keyspace: str, table: str, n: int, concurrency: int) -> float:
    statement = session.prepare(
        f"INSERT INTO {keyspace}.{table} (id, customer, status, amount) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
    )
    rows = []
    for i in range(n):
        doc = document(i)
        rows.append((key_of(i), doc["customer"], doc["status"], float(doc["amount"]), time.time_ns() // 1000))
    started = time.perf_counter()
    results = execute_concurrent_with_args(
        session, statement, rows, concurrency=concurrency, raise_on_first_error=False
    )
    elapsed = time.perf_counter() - started
    failed = [result for ok, result in results if not ok]
    if failed:
        raise BenchError(f"raw Cassandra: {len(failed)} of {n} inserts failed, first: {failed[0]}")
    return elapsed


def raw_elasticsearch(es: Elasticsearch, index: str, n: int, batch: int) -> float:
    actions = []
    for i in range(n):
        doc = document(i)
        actions.append(
            {
                "_op_type": "index",
                "_index": index,
                "_id": key_of(i),
                "version": time.time_ns() // 1000,
                "version_type": "external",
                "_source": doc,
            }
        )
    started = time.perf_counter()
    ok, errors = helpers.bulk(es, actions, chunk_size=batch, max_chunk_bytes=100 << 20, raise_on_error=False)
    elapsed = time.perf_counter() - started
    if errors or ok != n:
        first = errors[:1] if isinstance(errors, list) else errors
        raise BenchError(f"raw Elasticsearch _bulk: {ok} of {n} indexed, first error: {first}")
    return elapsed


def cassandra_count(session: Session, keyspace: str, table: str) -> int:
    row = session.execute(SimpleStatement(f"SELECT COUNT(*) FROM {keyspace}.{table}"), timeout=120).one()
    return int(row[0])


def es_count(es: Elasticsearch, index: str) -> int:
    es.indices.refresh(index=index)
    return int(es.count(index=index)["count"])


async def sdk_writer(kafka: KafkaAccess, ns: Namespace) -> WalWriter:
    """A WalWriter on the namespace's log, connected (one durable write done) before any clock starts."""
    KafkaAdmin(kafka).ensure_topics([TopicSpec(topics.wal_topic(ns.name), ns.partitions)])
    writer = WalWriter(kafka, {ns.name: ns})
    warm = await writer.write(ns.name, "warmup", Op.UPSERT, document(0))
    if not warm.ok:
        writer.close(10)
        raise BenchError(f"SDK warm-up write not durable: {warm.durable.value} {warm.message}")
    return writer


async def sdk_round(writer: WalWriter, ns: Namespace, n: int, in_flight: int) -> float:
    """The SDK's side of the raw produce bound: the same N documents written through the writer (validated,
    encoded, each answered with its own durable Delivery); seconds from the first write to the last answer.
    Like the raw bound's records, the keys and documents are made before the clock starts."""
    inputs = [(key_of(i), document(i)) for i in range(n)]
    first, last, failures = await produce_all(writer, ns.name, n, in_flight, inputs=inputs)
    if failures:
        raise BenchError(f"{len(failures)} of {n} SDK writes were not durable, first: {failures[0]}")
    return last - first


def produce_rounds(
    kafka: KafkaAccess,
    raw_topic: str,
    ns: Namespace,
    records: Sequence[tuple[bytes, bytes]],
    in_flight: int,
    rounds: int,
    watch: StackWatch,
    profile: str | None = None,
) -> tuple[list[float], list[float]]:
    """The raw produce bound and the SDK's produce, compared like with like: the same N documents, the same producer
    settings (acks=all, idempotence), both producers connected (with their producer ids) before any clock starts,
    nothing else of the bench running, and the rounds alternating (raw, SDK, raw, SDK, ...) so that both sides
    see the same load of a shared machine. Returns the seconds of each raw round and of each SDK round.
    ``profile``: run the SDK rounds under cProfile and write the profile there (main thread only)."""
    n = len(records)
    KafkaAdmin(kafka).ensure_topics([TopicSpec(raw_topic, ns.partitions)])
    producer = Producer(producer_config(kafka))
    raw_produce_round(producer, raw_topic, records[:1])
    loop = asyncio.new_event_loop()
    writer = loop.run_until_complete(sdk_writer(kafka, ns))
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    raw_s: list[float] = []
    sdk_s: list[float] = []
    try:
        for _ in range(rounds):
            watch.phase = "raw kafka"
            raw_s.append(raw_produce_round(producer, raw_topic, records))
            watch.phase = "sdk produce"
            if profiler is not None:
                profiler.enable()
            sdk_s.append(loop.run_until_complete(sdk_round(writer, ns, n, in_flight)))
            if profiler is not None:
                profiler.disable()
            say(f"  raw kafka produce {rate(n, raw_s[-1]):,.0f}/s, SDK produce {rate(n, sdk_s[-1]):,.0f}/s")
    finally:
        writer.close(10)
        loop.close()
        if profiler is not None and profile:
            profiler.dump_stats(profile)
            say(f"  SDK profile (main thread only) written to {profile}")
    return raw_s, sdk_s


def produce_figures(n: int, raw_s: Sequence[float], sdk_s: Sequence[float]) -> dict[str, Any]:
    return {
        "raw_kafka_produce_rate": rate(n, statistics.median(raw_s)),
        "sdk_produce_rate": rate(n, statistics.median(sdk_s)),
        "ratio_sdk_vs_raw_kafka_produce": statistics.median(raw_s) / statistics.median(sdk_s),
        # Per round, the ratio of two figures measured seconds apart: its spread says how noisy the machine was.
        "produce_round_ratios": [round(r / s, 3) for r, s in zip(raw_s, sdk_s, strict=True)],
    }


# -- the pipeline ------------------------------------------------------------------------------------------------------


async def wait_until(
    what: str, done: Callable[[], bool], worker: WorkerGroup, counter: CdcCounter, timeout: float, stall: float = 0.0
) -> None:
    """Poll ``done`` every 20 ms; fail when the worker dies, the counter fails, or nothing moves for ``stall`` s."""
    deadline = time.monotonic() + timeout
    last_total, last_move = counter.total_events(), time.monotonic()
    while not done():
        worker.check_alive()
        if counter.error:
            raise BenchError(f"reading the CDC topic failed: {counter.error}")
        now = time.monotonic()
        total = counter.total_events()
        if total != last_total:
            last_total, last_move = total, now
        if now > deadline or (stall and now - last_move > stall):
            why = f"no change event for {now - last_move:.0f} s" if now <= deadline else f"{timeout:.0f} s passed"
            raise BenchError(
                f"{what}: gave up ({why}); {counter.bench_seen()} bench change events seen. "
                f"The worker log ends with:\n{worker.tail()}"
            )
        await asyncio.sleep(0.02)


async def produce_all(
    writer: WalWriter,
    namespace: str,
    n: int,
    in_flight: int,
    chunk: int = 500,
    inputs: Sequence[tuple[str, dict[str, Any]]] | None = None,
) -> tuple[float, float, list[str]]:
    """Write N upserts through the SDK, prepared and written ``chunk`` at a time with ``write_many`` (its bulk
    call), up to ``in_flight`` entries outstanding; returns (first write, last ack, failures). ``inputs``: the
    (key, document) pairs made beforehand, as the raw bound's records are."""
    limit = asyncio.Semaphore(max(1, in_flight // chunk))
    failures: list[str] = []
    last_ack = 0.0

    async def some(start: int) -> None:
        nonlocal last_ack
        try:
            end = min(start + chunk, n)
            if inputs is None:
                entries = [writer.prepare(namespace, key_of(i), Op.UPSERT, document(i)) for i in range(start, end)]
            else:
                entries = [writer.prepare(namespace, key, Op.UPSERT, doc) for key, doc in inputs[start:end]]
            for entry, result in zip(entries, await writer.write_many(entries), strict=True):
                if result.durable is not Durable.TRUE:
                    failures.append(f"{entry.key}: {result.durable.value} {result.message}")
            last_ack = time.perf_counter()
        finally:
            limit.release()

    tasks = set()
    started = time.perf_counter()
    for start in range(0, n, chunk):
        await limit.acquire()
        task = asyncio.create_task(some(start))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    return started, last_ack, failures


async def run_pipeline(
    ns: Namespace,
    endpoints: Endpoints,
    worker: WorkerGroup,
    counter: CdcCounter,
    args: argparse.Namespace,
    meter: CpuMeter,
) -> dict[str, Any]:
    writer = WalWriter(endpoints.kafka, {ns.name: ns})
    sampler = PeakSampler(worker.pids)
    try:
        # Warm-up: upserts on several partitions, then deletes, so the rows are gone before the timed run.
        say("  waiting for the worker to consume (warm-up entries) ...")
        warm = [f"warmup-{i:02d}" for i in range(WARMUP_KEYS)]
        started = time.perf_counter()
        for op, round_ in ((Op.UPSERT, 1), (Op.DELETE, 2)):
            payload = {"customer": "warmup", "status": "new", "amount": 0.0} if op is Op.UPSERT else None
            results = await asyncio.gather(*(writer.write(ns.name, k, op, payload) for k in warm))
            bad = [r for r in results if not r.ok]
            if bad:
                raise BenchError(f"warm-up write not durable: {bad[0].durable.value} {bad[0].message}")

            def warmed(r: int = round_) -> bool:
                return all(counter.count(k.encode()) >= r for k in warm)

            await wait_until(
                "warm-up",
                warmed,
                worker,
                counter,
                timeout=args.startup_timeout,
            )
        say(f"  worker consuming after {time.perf_counter() - started:.1f} s of warm-up")

        sampler.start()
        meter.start()
        killed_at: list[float] = []

        async def kill_later() -> None:
            await asyncio.sleep(args.kill_after)
            killed_at.append(time.perf_counter())
            worker.kill_and_restart()
            say(f"  worker killed (SIGKILL) and restarted {args.kill_after:.1f} s into the run")

        killer = asyncio.create_task(kill_later()) if args.kill_after else None
        produce = asyncio.create_task(produce_all(writer, ns.name, args.entries, args.in_flight))
        first_write, last_ack, failures = await produce
        if failures:
            raise BenchError(f"{len(failures)} of {args.entries} SDK writes were not durable, first: {failures[0]}")
        say(f"  {args.entries} entries durable in {last_ack - first_write:.2f} s; waiting for the sinks ...")
        await wait_until(
            "pipeline",
            lambda: counter.bench_seen() >= args.entries,
            worker,
            counter,
            timeout=args.timeout,
            stall=args.stall_timeout,
        )
        cpu = meter.stop()
        if killer is not None and not killer.done():
            killer.cancel()
        arrivals = list(counter.bench_arrivals)
        end = arrivals[args.entries - 1]
        n = args.entries
        lo, hi = arrivals[n // 10], arrivals[(9 * n) // 10]
        recovery = recovery_after_kill(arrivals, killed_at[0]) if killed_at else {}
        return {
            **recovery,
            "produce_s": last_ack - first_write,
            "pipeline_s": end - first_write,
            "first_applied_s": arrivals[0] - first_write,
            "drain_after_last_ack_s": end - last_ack,
            "steady_rate": (hi - lo) and (((9 * n) // 10 - n // 10) / (hi - lo)),
            "cpu_cores": cpu,
            "worker_peak_cpu": max(sampler.samples, default=0.0),
        }
    finally:
        if sampler.is_alive():
            sampler.stop()
        pending = writer.close(10)
        if pending:
            say(f"  warning: {pending} SDK writes still pending at close")


def recovery_after_kill(arrivals: Sequence[float], killed: float, window: float = 1.0) -> dict[str, float | None]:
    """From the change events' arrival times: seconds from the SIGKILL until the restarted worker applied its
    first entry, and until it applied them at full rate again (a one-second window with at least 80% of the
    rate of the three seconds before the kill)."""
    before = [a for a in arrivals if killed - 3.0 <= a < killed]
    rate = len(before) / 3.0
    after = [a for a in arrivals if a >= killed]
    first = after[0] - killed if after else None
    full = None
    for i, start in enumerate(after):
        j = i
        while j < len(after) and after[j] < start + window:
            j += 1
        if rate and j - i >= 0.8 * rate * window:
            full = start - killed
            break
    return {"recovery_first_applied_s": first, "recovery_full_rate_s": full, "rate_before_kill": rate}


def end_offsets(kafka: KafkaAccess, names: Sequence[str]) -> dict[str, int]:
    consumer = Consumer({**client_config(kafka), "group.id": f"bench-offsets-{secrets.token_hex(4)}"})
    try:
        totals = {}
        meta = consumer.list_topics(timeout=10).topics
        for name in names:
            if name not in meta:
                continue
            totals[name] = sum(
                consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in meta[name].partitions
            )
        return totals
    finally:
        consumer.close()


# -- cleanup -----------------------------------------------------------------------------------------------------------


class Cleanup:
    """Undo steps, run last-in first-out; each failure is reported and the rest still run."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, step: Callable[[], Any]) -> None:
        self._steps.append((what, step))

    def run(self) -> list[str]:
        problems = []
        while self._steps:
            what, step = self._steps.pop()
            try:
                note = step()
                if isinstance(note, str) and note and not what.startswith("copy"):
                    say(f"  {what}: {note}")
            except Exception as exc:  # noqa: BLE001 - cleanup goes on and reports what it could not undo
                problems.append(f"{what}: {type(exc).__name__}: {exc}")
                say(f"  could not {what}: {type(exc).__name__}: {exc}")
        return problems


def delete_kafka_leftovers(kafka: KafkaAccess, token: str) -> str:
    """Every topic and consumer group whose name holds this run's random token: the worker's Faust topics
    (walstream.<ns>-*), its consumer groups (walstream.<ns>, and any the worker adds), the scratch topic."""
    admin = AdminClient(admin_config(kafka))
    groups = sorted(
        g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid if token in g.group_id
    )
    found = list(groups)
    for attempt in range(15):
        pending = []
        for group, future in admin.delete_consumer_groups(groups, request_timeout=10).items() if groups else []:
            try:
                future.result(timeout=15)
            except KafkaException as exc:
                code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
                if code == KafkaError.NON_EMPTY_GROUP and attempt < 14:
                    pending.append(group)  # the stopped worker's membership has not expired yet
                elif code != KafkaError.GROUP_ID_NOT_FOUND:
                    raise
        if not pending:
            break
        groups = pending
        time.sleep(1.0)
    names = sorted(t for t in admin.list_topics(timeout=10).topics if token in t)
    KafkaAdmin(kafka).delete_topics(names)
    return f"deleted groups {', '.join(found) or 'none'}; topics {', '.join(names) or 'none'}"


# -- main --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM to the bench unwinds like Ctrl-C, so the finally blocks clean up."""

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.only == "produce" and not (args.secure or args.own_stack):
        endpoints, stack_pids = resolve_endpoints()
        return measure_produce(args, endpoints, stack_pids)
    if not (args.secure or args.own_stack):
        endpoints, stack_pids = resolve_endpoints()
        return measure(args, endpoints, stack_pids)
    with own_stack(args.secure) as (stack, started_s):
        figures = measure(args, stack.endpoints(), stack.pids(), stack_env=stack.client_env())
        figures["own_stack_startup_s"] = round(started_s, 1)
        return figures


def measure(
    args: argparse.Namespace,
    endpoints: Endpoints,
    stack_pids: dict[str, int],
    stack_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The whole measurement on one stack; ``stack_env`` is what the worker processes are given to reach it."""
    say(f"stack: {', '.join(f'{k} {v}' for k, v in endpoints.describe().items())}")
    security = describe_security(endpoints)
    if security:
        say(f"security: {security}")
    probe(endpoints)
    services = {service: with_descendants(pid) for service, pid in stack_pids.items()}
    watch = StackWatch(services)
    watch.start()

    suffix = secrets.token_hex(4)
    name = f"bench_{suffix}"
    tmp = Path(tempfile.mkdtemp(prefix=f"walstream-{name}-"))
    cleanup = Cleanup()
    cleanup.push(f"remove {tmp}", lambda: shutil.rmtree(tmp, ignore_errors=True))
    ns_dir = tmp / "namespaces"
    ns_dir.mkdir()
    ns_file = ns_dir / f"{name}.yaml"
    ns_file.write_text(yaml.safe_dump(namespace_document(name, suffix, args.partitions), sort_keys=False))
    ns = load_namespace(ns_file)
    ctarget = ns.targets_of_type("cassandra")[CASSANDRA_TARGET]
    etarget = ns.targets_of_type("elasticsearch")[ES_TARGET]
    raw_table = ctarget.model_copy(update={"table": "raw_items"})
    raw_index = etarget.model_copy(update={"index": f"{etarget.index}-raw"})
    raw_topic = f"bench.{suffix}.raw"
    kafka = endpoints.kafka
    admin = KafkaAdmin(kafka)
    n = args.entries
    figures: dict[str, Any] = {"entries": n, "partitions": args.partitions, "workers": args.workers, "namespace": name}
    if security:  # an open stack's figures keep their old shape
        figures["security"] = security

    cluster: Cluster | None = None
    es: Elasticsearch | None = None
    counter: CdcCounter | None = None
    failure: BaseException | None = None
    try:
        # Everything created from here on is undone by `cleanup` (last in, first out), also after a failure halfway.
        cleanup.push("delete the namespace's topics", lambda: admin.delete_topics(ns.topics()))
        cleanup.push(f"delete topic {raw_topic}", lambda: admin.delete_topics([raw_topic]))
        cleanup.push(f"delete Kafka topics and groups named *{suffix}*", lambda: delete_kafka_leftovers(kafka, suffix))
        cluster = new_cluster(
            endpoints.cassandra_host, endpoints.cassandra_port, timeout=30, security=endpoints.security.cassandra
        )
        session = cluster.connect()
        cleanup.push(
            f"drop keyspace {ctarget.keyspace}",
            lambda: session.execute(f"DROP KEYSPACE IF EXISTS {ctarget.keyspace}", timeout=120),
        )
        es = new_client(endpoints.elasticsearch_url, endpoints.security.elasticsearch, request_timeout=120)
        cleanup.push(
            f"delete indices {etarget.index}, {raw_index.index}",
            lambda: [drop_target_index(es, etarget.index), drop_target_index(es, raw_index.index)],
        )

        say(f"namespace {name}: creating topics ({args.partitions} partitions), keyspace and indices")

        async def create() -> None:
            await apply_namespaces([ns], endpoints)
            connections = Connections(endpoints)
            try:
                await CassandraSink(connections.cassandra(), "raw", raw_table).ensure_schema()
                await ElasticsearchSink(connections.elasticsearch(), "raw", raw_index).ensure_schema()
            finally:
                await connections.close()

        asyncio.run(create())

        # -- raw bounds ------------------------------------------------------------------------------------------
        records = wal_records(ns, n)
        if args.warm_up:
            # A fresh stack's JVMs are cold: bounds timed in their first minute are low, and the pipeline, timed
            # later, would look better than it is. One untimed pass of every raw phase first (its own topic; the
            # timed pass overwrites the same rows and documents).
            say("warm-up: one untimed pass of the raw bounds (the stack is freshly started)")
            started = time.perf_counter()
            raw_kafka(kafka, f"{raw_topic}.warmup", args.partitions, records, rounds=1)
            raw_cassandra(session, raw_table.keyspace, raw_table.table, n, args.cassandra_concurrency)
            raw_elasticsearch(es, raw_index.index, n, args.es_batch)
            figures["warm_up_s"] = round(time.perf_counter() - started, 1)
        say(f"raw bounds, {n} records each")
        say("  kafka produce and SDK produce (alone, alternating rounds)")
        sdk_ns = scratch_namespace(tmp / "sdk", f"{name}_sdk", suffix, args.partitions)
        cleanup.push("delete the SDK phase's log", lambda: admin.delete_topics([topics.wal_topic(sdk_ns.name)]))
        raw_s, sdk_s = produce_rounds(kafka, raw_topic, sdk_ns, records, args.in_flight, 3, watch)
        figures.update(produce_figures(n, raw_s, sdk_s))
        watch.phase = "raw kafka"
        raw = raw_kafka(kafka, raw_topic, args.partitions, records, produce=False)
        del records
        figures["raw_kafka_consume_rate"] = rate(n, raw["consume_s"])
        figures["avg_wal_record_bytes"] = round(raw["avg_record_bytes"], 1)
        say(
            f"  kafka: produce {figures['raw_kafka_produce_rate']:,.0f}/s, "
            f"consume {figures['raw_kafka_consume_rate']:,.0f}/s; SDK produce {figures['sdk_produce_rate']:,.0f}/s"
        )
        watch.phase = "raw cassandra"
        cass_s = raw_cassandra(session, raw_table.keyspace, raw_table.table, n, args.cassandra_concurrency)
        figures["raw_cassandra_rate"] = rate(n, cass_s)
        say(f"  cassandra: {figures['raw_cassandra_rate']:,.0f}/s")
        watch.phase = "raw elasticsearch"
        es_s = raw_elasticsearch(es, raw_index.index, n, args.es_batch)
        figures["raw_elasticsearch_rate"] = rate(n, es_s)
        say(f"  elasticsearch: {figures['raw_elasticsearch_rate']:,.0f}/s")
        raw_rows, raw_docs = (
            cassandra_count(session, raw_table.keyspace, raw_table.table),
            es_count(es, raw_index.index),
        )
        if raw_rows != n or raw_docs != n:
            raise BenchError(f"raw bounds wrote {raw_rows} Cassandra rows and {raw_docs} documents, expected {n}")

        # -- pipeline --------------------------------------------------------------------------------------------
        say("pipeline: starting `walstream worker`")
        counter = CdcCounter(kafka, topics.cdc_topic(name), args.partitions, b"e-")
        counter.start()
        cleanup.push("stop the CDC reader", counter.stop)
        profile = Path(args.profile_worker).resolve() if args.profile_worker else None
        members = []
        for index in range(args.workers):
            log = tmp / f"worker-{index + 1}.log"
            member = WorkerProcess(
                name, ns_dir, tmp / f"data-{index + 1}", log, profile if index == 0 else None, stack_env
            )
            members.append(member)
            say(f"  worker pid {member.pid}, log {member.log}")
            if profile is not None and index == 0:
                cleanup.push("summarise the worker profile", lambda: print_profile(profile))
            if args.keep_worker_log:
                keep = Path(args.keep_worker_log).resolve()
                keep = keep if args.workers == 1 else keep.with_name(f"{keep.name}.{index + 1}")
                cleanup.push(f"copy the worker log to {keep}", functools.partial(shutil.copyfile, log, keep))
            # The group's current member at that index: a restarted worker (--kill-after) replaces the first.
            cleanup.push(f"stop worker {index + 1}", functools.partial(lambda i: worker.members[i].stop(), index))
        worker = WorkerGroup(members)
        if args.workers > 1:
            say(f"  waiting for the {args.workers} workers to share the partitions")
            wait_for_group(kafka, f"walstream.{name}", args.workers, worker, args.startup_timeout)

        meter = CpuMeter({"worker": worker.pids, "bench": [os.getpid()], **services})
        watch.phase = "pipeline"
        pipe = asyncio.run(run_pipeline(ns, endpoints, worker, counter, args, meter))
        watch.phase = "verification"
        # The SDK's rate while the worker consumes on the same machine: not comparable with the raw produce bound.
        figures["sdk_produce_rate_during_pipeline"] = rate(n, pipe["produce_s"])
        figures["pipeline_rate"] = rate(n, pipe["pipeline_s"])
        figures["pipeline_seconds"] = round(pipe["pipeline_s"], 3)
        figures["pipeline_steady_rate"] = pipe["steady_rate"]
        figures["first_applied_s"] = round(pipe["first_applied_s"], 3)
        figures["drain_after_last_ack_s"] = round(pipe["drain_after_last_ack_s"], 3)
        figures["cpu_cores_during_pipeline"] = {k: round(v, 2) for k, v in pipe["cpu_cores"].items()}
        figures["worker_peak_cpu_1s"] = round(pipe["worker_peak_cpu"], 2)
        if args.kill_after:
            figures["kill_after_s"] = args.kill_after
            for name in ("recovery_first_applied_s", "recovery_full_rate_s"):
                figures[name] = None if pipe.get(name) is None else round(pipe[name], 2)
        # What one entry costs the worker processes, however many there are: the figure to size a fleet by.
        worker_cpu_s = pipe["cpu_cores"].get("worker", 0.0) * pipe["pipeline_s"]
        figures["worker_cpu_us_per_entry"] = round(worker_cpu_s / n * 1e6, 1)
        figures["entries_per_worker_cpu_second"] = round(n / worker_cpu_s) if worker_cpu_s else None

        rows, docs = cassandra_count(session, ctarget.keyspace, ctarget.table), es_count(es, etarget.index)
        figures["cassandra_rows"], figures["elasticsearch_docs"] = rows, docs
        internal = f"walstream.{name}"
        existing = AdminClient(admin_config(kafka)).list_topics(timeout=10).topics
        offsets = end_offsets(kafka, sorted({*ns.topics(), *(t for t in existing if t.startswith(internal))}))
        figures["dlq_records"] = offsets.get(topics.dlq_topic(name), 0)
        # Entries parked in a retry tier had a failed (retryable) write: a sign of trouble even when all converge.
        figures["retry_tier_records"] = {k: v for k, v in offsets.items() if k.startswith(f"wal.{name}.retry.")}
        figures["worker_internal_topic_records"] = {k: v for k, v in offsets.items() if k.startswith(internal)}
        figures["verified"] = rows == n and docs == n and figures["dlq_records"] == 0
        if not figures["verified"]:
            raise BenchError(
                f"verification failed: {rows} Cassandra rows, {docs} Elasticsearch documents, "
                f"{figures['dlq_records']} dead letters; expected {n}, {n}, 0"
            )
        slowest = min(figures["raw_cassandra_rate"], figures["raw_elasticsearch_rate"])
        figures["slowest_raw_sink"] = "cassandra" if slowest == figures["raw_cassandra_rate"] else "elasticsearch"
        figures["ratio_vs_slowest_raw_sink"] = figures["pipeline_rate"] / slowest
        figures["ratio_vs_raw_kafka_consume"] = figures["pipeline_rate"] / figures["raw_kafka_consume_rate"]
        figures["target_ratio"] = args.target
        figures["frozen_service_seconds"] = {
            phase: per
            for phase, per in watch.frozen.items()
            if phase in ("raw kafka", "sdk produce", "raw cassandra", "raw elasticsearch", "pipeline")
        }
        # A figure taken while a service was frozen by somebody else says nothing about walstream.
        figures["valid"] = not figures["frozen_service_seconds"]
        figures["meets_target"] = figures["valid"] and figures["ratio_vs_slowest_raw_sink"] >= args.target
        return figures
    except BaseException as exc:
        failure = exc
        raise
    finally:
        say("cleaning up" + (" after an error" if failure is not None else ""))
        watch.stop()
        problems = cleanup.run()
        if es is not None:
            es.close()
        if cluster is not None:
            cluster.shutdown()
        if problems and failure is None:
            raise BenchError("cleanup left things behind:\n  " + "\n  ".join(problems))


def measure_produce(args: argparse.Namespace, endpoints: Endpoints, stack_pids: dict[str, int]) -> dict[str, Any]:
    """``--only produce``: the raw Kafka produce bound and the SDK's produce rate, nothing else (Kafka only)."""
    say(f"stack: {', '.join(f'{k} {v}' for k, v in endpoints.describe().items())}")
    kafka = endpoints.kafka
    try:
        AdminClient(admin_config(kafka)).list_topics(timeout=10)
    except KafkaException as exc:
        raise BenchError(f"Kafka at {endpoints.kafka_bootstrap} does not answer: {exc}") from None
    watch = StackWatch({service: with_descendants(pid) for service, pid in stack_pids.items()})
    watch.start()
    suffix = secrets.token_hex(4)
    tmp = Path(tempfile.mkdtemp(prefix=f"walstream-bench_{suffix}-"))
    admin = KafkaAdmin(kafka)
    cleanup = Cleanup()
    cleanup.push(f"remove {tmp}", lambda: shutil.rmtree(tmp, ignore_errors=True))
    n = args.entries
    figures: dict[str, Any] = {"entries": n, "partitions": args.partitions, "only": "produce"}
    try:
        ns = scratch_namespace(tmp, f"bench_{suffix}", suffix, args.partitions)
        raw_topic = f"bench.{suffix}.raw"
        cleanup.push("delete the scratch topics", lambda: admin.delete_topics([raw_topic, topics.wal_topic(ns.name)]))
        records = wal_records(ns, n)
        say(f"raw Kafka produce and SDK produce, {n} records each, alternating, median of {args.rounds} rounds")
        raw_s, sdk_s = produce_rounds(
            kafka, raw_topic, ns, records, args.in_flight, args.rounds, watch, args.profile_sdk
        )
        del records
        figures.update(produce_figures(n, raw_s, sdk_s))
        figures["rounds"] = args.rounds
        figures["frozen_service_seconds"] = dict(watch.frozen)
        figures["valid"] = not watch.frozen
        return figures
    finally:
        watch.stop()
        problems = cleanup.run()
        if problems:
            say("cleanup left things behind:\n  " + "\n  ".join(problems))


def print_profile(path: Path, top: int = 30) -> str:
    """The worker's hottest functions (main thread only: driver and producer threads are not profiled)."""
    import pstats

    if not path.exists():
        return f"no profile at {path} (the worker did not exit cleanly)"
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return f"profile written to {path}"


def print_report(f: dict[str, Any]) -> None:
    n = f["entries"]
    rows = [
        ("raw Kafka produce (confluent-kafka, acks=all)", f["raw_kafka_produce_rate"]),
        ("raw Kafka consume (confluent-kafka)", f["raw_kafka_consume_rate"]),
        ("raw Cassandra (prepared, execute_concurrent)", f["raw_cassandra_rate"]),
        ("raw Elasticsearch (_bulk)", f["raw_elasticsearch_rate"]),
        ("SDK produce (durable acks, alone)", f["sdk_produce_rate"]),
        ("SDK produce during the pipeline", f["sdk_produce_rate_during_pipeline"]),
        ("pipeline end to end (both sinks + CDC)", f["pipeline_rate"]),
    ]
    print()
    print(
        f"walstream pipeline benchmark: {n} unique-key upserts, {f['partitions']} partitions, "
        f"{f['workers']} worker process{'es' if f['workers'] > 1 else ''}, "
        f"~{f['avg_wal_record_bytes']:.0f} B per WAL record"
    )
    kind = "secured" if f.get("security") else "open"
    where = (
        f"the bench's own {kind} stack (started in {f['own_stack_startup_s']:.0f} s, not measured)"
        if "own_stack_startup_s" in f
        else f"a {kind} stack"
    )
    if f.get("security"):
        print(f"SECURED run on {where}; every client and raw bound: {f['security']}")
    elif "own_stack_startup_s" in f:
        print(f"open (not secured) run on {where}")
    print(f"{'measure':<48} {'entries/s':>12} {'seconds':>9}")
    print("-" * 71)
    for label, value in rows:
        print(f"{label:<48} {value:>12,.0f} {n / value:>9.2f}")
    print("-" * 71)
    print(f"pipeline steady state (10%..90% of CDC events):  {f['pipeline_steady_rate']:>10,.0f}/s")
    print(
        f"first entry applied after {f['first_applied_s']:.2f} s; sinks finished "
        f"{f['drain_after_last_ack_s']:.2f} s after the last durable ack"
    )
    verdict = "meets" if f["meets_target"] else ("BELOW" if f["valid"] else "NOT VALID: see the warning below")
    print(
        f"pipeline / slowest raw sink ({f['slowest_raw_sink']}): {f['ratio_vs_slowest_raw_sink']:.3f}  "
        f"({verdict} the target of {f['target_ratio']})"
    )
    if f.get("kill_after_s"):
        first, full = f["recovery_first_applied_s"], f["recovery_full_rate_s"]
        print(
            f"worker SIGKILLed and restarted {f['kill_after_s']:.1f} s into the run: applying again after "
            f"{'-' if first is None else f'{first:.1f} s'}, "
            f"at full rate after {'-' if full is None else f'{full:.1f} s'} (CPU figures below include the restart)"
        )
    print(
        f"worker CPU per entry: {f['worker_cpu_us_per_entry']:.0f} µs "
        f"({f['entries_per_worker_cpu_second'] or 0:,} entries per worker CPU-second)"
    )
    print(f"pipeline / raw Kafka consume:                 {f['ratio_vs_raw_kafka_consume']:.3f}")
    print(f"SDK produce / raw Kafka produce:              {f['ratio_sdk_vs_raw_kafka_produce']:.3f}")
    cores = dict(f["cpu_cores_during_pipeline"])
    machine = cores.pop("machine", 0.0)
    named = ", ".join(f"{k} {v:.2f}" for k, v in cores.items())
    print(
        f"CPU cores busy during the pipeline run: {named}; whole machine {machine:.2f} of {os.cpu_count()} "
        f"(others {max(machine - sum(cores.values()), 0.0):.2f}); "
        f"worker peak over 1 s: {f['worker_peak_cpu_1s']:.2f}"
    )
    print(
        f"verified: {f['cassandra_rows']} Cassandra rows, {f['elasticsearch_docs']} Elasticsearch documents, "
        f"{f['dlq_records']} dead letters"
    )
    if f["frozen_service_seconds"]:
        frozen = "; ".join(
            f"{phase}: " + ", ".join(f"{svc} ~{secs:.1f} s" for svc, secs in per.items())
            for phase, per in f["frozen_service_seconds"].items()
        )
        print(f"WARNING: stack services were stopped (SIGSTOP, by someone else) while measuring: {frozen}.")
        print("         Those figures are not valid; run the bench again when the shared stack is quiet.")
    retried = ", ".join(f"{k} {v}" for k, v in f["retry_tier_records"].items() if v) or "none"
    print(f"records parked in retry tiers: {retried}")
    internal = ", ".join(f"{k} {v}" for k, v in f["worker_internal_topic_records"].items()) or "none"
    print(f"worker internal topics (records): {internal}")
    print()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000, help="entries per phase (default 20000)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the namespace (default 6)")
    parser.add_argument("--in-flight", type=int, default=10_000, help="SDK writes in flight at once (default 10000)")
    parser.add_argument("--cassandra-concurrency", type=int, default=100, help="raw Cassandra concurrency")
    parser.add_argument("--es-batch", type=int, default=1000, help="raw Elasticsearch documents per _bulk")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds the pipeline may take in all")
    parser.add_argument("--stall-timeout", type=float, default=60.0, help="give up after this long without progress")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds for the worker to start")
    parser.add_argument(
        "--profile-worker",
        metavar="FILE",
        help="run the worker under cProfile and write the profile here (slows the worker: figures are not comparable)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the partitions (default 1)")
    parser.add_argument(
        "--kill-after",
        type=float,
        default=0.0,
        metavar="S",
        help="SIGKILL the (first) worker S seconds into the run and restart it at once; prints how long it took to "
        "apply entries again, and to do so at full rate",
    )
    parser.add_argument("--keep-worker-log", metavar="FILE", help="copy the worker's log here before cleaning up")
    parser.add_argument("--target", type=float, default=0.6, help="the pipeline / slowest raw sink ratio to meet")
    parser.add_argument(
        "--secure",
        action="store_true",
        help="start an own secured embedded stack (free ports, a folder under /tmp) and measure everything on it: "
        "Kafka TLS + SASL SCRAM, Cassandra TLS + password, Elasticsearch https + basic auth; stopped at the end",
    )
    parser.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one untimed pass of the raw bounds before the timed one (default: on with --secure/--own-stack, "
        "whose stack is freshly started; off on the shared stack)",
    )
    parser.add_argument(
        "--own-stack",
        action="store_true",
        help="like --secure but the own stack is open: the control that tells the cost of TLS and passwords from "
        "that of a freshly started stack",
    )
    parser.add_argument(
        "--only",
        choices=("produce",),
        help="produce: only the raw Kafka produce bound and the SDK's produce rate (Kafka alone; seconds, not minutes)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="with --only produce: alternating raw and SDK rounds (default 3)"
    )
    parser.add_argument(
        "--profile-sdk",
        metavar="FILE",
        help="with --only produce: run the SDK phase under cProfile and write the profile here (slower: figures are "
        "not comparable)",
    )
    parser.add_argument(
        "--backend",
        choices=("kafka", "sqs"),
        default="kafka",
        help="sqs: the pipeline's rate on an SQS namespace beside a Kafka one, measured the same way "
        "(bench/backends.py; --entries defaults to 2000 there)",
    )
    args = parser.parse_args(argv)
    if args.backend == "sqs":
        from bench.backends import compare

        if "--entries" not in (argv if argv is not None else sys.argv[1:]):
            args.entries = 2_000
        endpoints, _ = resolve_endpoints()
        return compare(endpoints, args)
    if args.only and (args.secure or args.own_stack):
        parser.error("--only runs on the configured stack; it does not combine with --secure or --own-stack")
    if args.entries < 10:
        parser.error("--entries must be at least 10")
    if not 1 <= args.workers <= args.partitions:
        parser.error("--workers must be between 1 and --partitions")
    if args.warm_up is None:
        args.warm_up = args.secure or args.own_stack
    try:
        with terminate_as_interrupt():
            figures = run(args)
    except (BenchError, StackError) as exc:
        say(f"bench: error: {exc}")
        return 2
    except KeyboardInterrupt:
        say("bench: interrupted (cleaned up)")
        return 130
    if args.only == "produce":
        print(
            f"\nraw Kafka produce {figures['raw_kafka_produce_rate']:,.0f}/s, SDK produce "
            f"{figures['sdk_produce_rate']:,.0f}/s: SDK / raw {figures['ratio_sdk_vs_raw_kafka_produce']:.3f} "
            f"(per round: {', '.join(f'{r:.3f}' for r in figures['produce_round_ratios'])})"
            + ("" if figures["valid"] else "  (NOT VALID: a stack service was stopped while measuring)")
        )
        print("BENCH_JSON " + json.dumps({"bench": "pipeline", **figures}, sort_keys=True), flush=True)
        return 0 if figures["valid"] else 3
    print_report(figures)
    print("BENCH_JSON " + json.dumps({"bench": "pipeline", **figures}, sort_keys=True), flush=True)
    if not figures["valid"]:
        return 3
    return 0 if figures["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
