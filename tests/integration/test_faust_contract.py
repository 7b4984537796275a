"""The contract the worker relies on from Faust's private consumer API, checked on the real Kafka.

The fan-out agent gets one event per fetched partition chunk, and the chunk's offsets are acknowledged through
Faust's offset gaps (streams/worker/app.py). These tests run that runtime (tests/integration/faust_harness.py:
the same app, transport and Batcher, without sinks) and check what Kafka itself holds: the committed offsets.
Throughout every test a monitor checks that no committed offset ever passes a record that was not processed
yet. The last test checks the idempotency table's recovery from its changelog with a real worker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin, TopicSpec
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.model import Op
from streams.worker.agent import CHANGELOG_TOPIC_CONFIG
from tests.integration.pipeline import REPO, WorkerProcess, cassandra_rows, create_namespace, free_port, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Harness:
    """A faust_harness process, stopped by its own pid."""

    topic: str
    group: str
    out: Path
    bootstrap: str
    crash_at: tuple[int, int] | None = None
    lose_at: tuple[int, int] | None = None
    delay: float = 0.02
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Harness:
        argv = [sys.executable, "-m", "tests.integration.faust_harness", self.topic, self.group, str(self.out)]
        argv += ["--bootstrap", self.bootstrap, "--delay", str(self.delay)]
        if self.crash_at is not None:
            argv += ["--crash-at", f"{self.crash_at[0]}:{self.crash_at[1]}"]
        if self.lose_at is not None:
            argv += ["--lose-at", f"{self.lose_at[0]}:{self.lose_at[1]}"]
        log = self.out.with_suffix(".log").open("ab")
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def tail(self) -> str:
        path = self.out.with_suffix(".log")
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@dataclass(frozen=True)
class Chunk:
    kind: str  # "chunk", or "crash" for the chunk the harness died in
    partition: int
    first: int
    last: int
    records: int


def chunks(*outs: Path) -> list[Chunk]:
    found = []
    for out in outs:
        if out.exists():
            for line in out.read_text().splitlines():
                kind, p, first, last, n = line.split()
                found.append(Chunk(kind, int(p), int(first), int(last), int(n)))
    return found


def processed(found: list[Chunk], partition: int) -> set[int]:
    """The offsets of a partition that some processed chunk covered (a crashed chunk was not processed)."""
    covered: set[int] = set()
    for c in found:
        if c.kind == "chunk" and c.partition == partition:
            covered.update(range(c.first, c.last + 1))
    return covered


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in tps}
    finally:
        consumer.close()


class CommitMonitor:
    """Polls the group's committed offsets and checks each against what the harnesses had processed by then:
    every offset below a committed one must have been processed (records, or offsets the test says hold no
    record, such as transaction markers and aborted records)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, outs: list[Path]) -> None:
        self._args = (bootstrap, group, topic, partitions)
        self._outs = outs
        self.no_record: set[tuple[int, int]] = set()
        self.violations: list[str] = []
        self.checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommitMonitor:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                positions = committed(*self._args)
            except KafkaException:
                continue
            found = chunks(*self._outs)  # read after the commits: what was processed by then, or later
            for partition, position in positions.items():
                done = processed(found, partition)
                missing = [o for o in range(position) if o not in done and (partition, o) not in self.no_record]
                if missing:
                    self.violations.append(f"partition {partition} committed at {position}, {missing[:5]} unprocessed")
            self.checks += 1


@dataclass
class Topic:
    name: str
    partitions: int
    bootstrap: str
    offsets: dict[int, list[int]] = field(default_factory=dict)  # what was produced, per partition

    def produce(self, count: int, transactional_id: str | None = None, abort: bool = False) -> list[tuple[int, int]]:
        config = {"bootstrap.servers": self.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
        if transactional_id:
            config["transactional.id"] = transactional_id
        producer = Producer(config)
        placed: list[tuple[int, int]] = []

        def report(err: object, msg: object) -> None:
            assert err is None, err
            placed.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

        if transactional_id:
            producer.init_transactions(30)
            producer.begin_transaction()
        for i in range(count):
            producer.produce(self.name, key=uuid.uuid4().bytes, value=b"v%d" % i, on_delivery=report)
            producer.poll(0)
        if transactional_id:
            producer.flush(30)
            (producer.abort_transaction if abort else producer.commit_transaction)(30)
        assert producer.flush(30) == 0
        if not abort:
            for p, o in placed:
                self.offsets.setdefault(p, []).append(o)
        return placed

    def ends(self) -> dict[int, int]:
        return KafkaAdmin(self.bootstrap).end_offsets(self.name)


@pytest.fixture
def topic(endpoints: Endpoints, request: pytest.FixtureRequest) -> Iterator[Topic]:
    partitions = getattr(request, "param", 3)
    name = f"contract-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdmin(endpoints.kafka_bootstrap)
    admin.ensure_topics([TopicSpec(name, partitions)])
    yield Topic(name, partitions, endpoints.kafka_bootstrap)
    admin.delete_topics([name])


def _members_with_partitions(bootstrap: str, group: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (description,) = [f.result(10) for f in admin.describe_consumer_groups([group]).values()]
    return sum(1 for m in description.members if m.assignment.topic_partitions)


def all_committed(topic: Topic, group: str) -> bool:
    return committed(topic.bootstrap, group, topic.name, topic.partitions) == topic.ends()


def test_chunks_are_processed_in_order_and_their_offsets_committed(topic: Topic, tmp_path: Path) -> None:
    group = f"contract-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "a.out"
    topic.produce(3000)
    harness = Harness(topic.name, group, out, topic.bootstrap, delay=0.05).start()
    try:
        with CommitMonitor(topic.bootstrap, group, topic.name, topic.partitions, [out]) as monitor:
            wait_until(lambda: all_committed(topic, group), 180, "every offset to be committed", harness.tail)
            topic.produce(1500)  # a second round, on partitions the group already owns
            wait_until(lambda: all_committed(topic, group), 180, "the second round to be committed", harness.tail)
        assert monitor.checks > 0 and monitor.violations == []
    finally:
        harness.stop()
    found = chunks(out)
    assert any(c.records > 1 for c in found), "records should arrive as chunks"
    for partition, produced in topic.offsets.items():
        mine = [c for c in found if c.partition == partition]
        assert sorted(o for c in mine for o in range(c.first, c.last + 1)) == sorted(produced)  # each once
        assert [c.first for c in mine] == sorted(c.first for c in mine)  # in order


def test_a_crash_in_the_middle_of_a_chunk_reads_the_whole_chunk_again(topic: Topic, tmp_path: Path) -> None:
    group = f"contract-{uuid.uuid4().hex[:8]}"
    first_out, second_out = tmp_path / "first.out", tmp_path / "second.out"
    topic.produce(3000)
    target = topic.offsets[0][len(topic.offsets[0]) // 2]
    crashing = Harness(topic.name, group, first_out, topic.bootstrap, crash_at=(0, target)).start()
    try:
        with CommitMonitor(topic.bootstrap, group, topic.name, topic.partitions, [first_out, second_out]) as monitor:
            wait_until(crashing.exited, 180, "the harness to crash mid-chunk", crashing.tail)
            assert crashing.proc is not None and crashing.proc.returncode == 70, crashing.tail()
            (crash,) = [c for c in chunks(first_out) if c.kind == "crash"]
            at_crash = committed(topic.bootstrap, group, topic.name, topic.partitions)
            assert at_crash[0] <= crash.first  # nothing of the unfinished chunk was committed
            restarted = Harness(topic.name, group, second_out, topic.bootstrap).start()
            try:
                wait_until(lambda: all_committed(topic, group), 180, "every offset to be committed", restarted.tail)
            finally:
                restarted.stop()
        assert monitor.checks > 0 and monitor.violations == []
    finally:
        crashing.stop()
    again = processed(chunks(second_out), 0)
    assert set(range(crash.first, crash.last + 1)) <= again  # the whole chunk, read again
    for partition, produced in topic.offsets.items():
        assert set(produced) <= processed(chunks(first_out, second_out), partition)  # nothing skipped


@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "more-records-follow"])
def test_a_fetch_that_never_reaches_the_agent_is_read_again(topic: Topic, tmp_path: Path, busy: bool) -> None:
    """Records fetched (the partition's position moved past them) but never passed on to the agent are fetched
    again: on a quiet partition by the consumer's timer, and when more records follow, by the next fetch, before
    Faust's drain loop could take the jump for a gap and commit over them."""
    group = f"contract-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "lossy.out"
    topic.produce(1500)
    target = max(topic.offsets[1]) + 1  # the first record of partition 1 in the second round
    harness = Harness(topic.name, group, out, topic.bootstrap, lose_at=(1, target), delay=0.02).start()
    try:
        with CommitMonitor(topic.bootstrap, group, topic.name, topic.partitions, [out]) as monitor:
            wait_until(lambda: all_committed(topic, group), 180, "the first round to be committed", harness.tail)
            topic.produce(1500)
            wait_until(lambda: "harness lost chunk" in harness.tail(), 180, "the harness to lose a chunk", harness.tail)
            if busy:
                topic.produce(1500)
            wait_until(lambda: all_committed(topic, group), 180, "every offset to be committed", harness.tail)
        assert monitor.checks > 0 and monitor.violations == []
        assert "never reached the agent; reading them again" in harness.tail()
    finally:
        harness.stop()
    for partition, produced in topic.offsets.items():
        assert set(produced) <= processed(chunks(out), partition)  # the lost chunk's records too


@pytest.mark.parametrize("topic", [6], indirect=True)
def test_a_rebalance_mid_stream_loses_nothing(topic: Topic, tmp_path: Path) -> None:
    group = f"contract-{uuid.uuid4().hex[:8]}"
    a_out, b_out = tmp_path / "a.out", tmp_path / "b.out"
    topic.produce(3000)
    a = Harness(topic.name, group, a_out, topic.bootstrap, delay=0.1).start()
    b = Harness(topic.name, group, b_out, topic.bootstrap, delay=0.1)
    try:
        with CommitMonitor(topic.bootstrap, group, topic.name, topic.partitions, [a_out, b_out]) as monitor:
            wait_until(lambda: len(chunks(a_out)) >= 3, 120, "the first harness to process chunks", a.tail)
            b.start()  # joins: the group rebalances while A is mid-stream
            wait_until(
                lambda: _members_with_partitions(topic.bootstrap, group) == 2, 120, "B to own partitions", b.tail
            )
            topic.produce(3000)  # on every partition: both harnesses have their share to process
            wait_until(lambda: len(chunks(b_out)) >= 1, 180, "the second harness to process chunks", b.tail)
            b.stop()  # leaves: its partitions go back to A
            topic.produce(1000)
            wait_until(lambda: all_committed(topic, group), 240, "every offset to be committed", a.tail)
        assert monitor.checks > 0 and monitor.violations == []
    finally:
        b.stop()
        a.stop()
    found = chunks(a_out, b_out)
    assert {c.partition for c in chunks(b_out)}, "the second harness never got a partition"
    for partition, produced in topic.offsets.items():
        assert set(produced) <= processed(found, partition)


@pytest.mark.parametrize("topic", [1], indirect=True)
def test_transaction_markers_and_aborted_records_inside_a_chunk(topic: Topic, tmp_path: Path) -> None:
    group = f"contract-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "a.out"
    topic.produce(200, transactional_id=f"contract-{uuid.uuid4().hex[:8]}")
    aborted = topic.produce(100, transactional_id=f"contract-{uuid.uuid4().hex[:8]}", abort=True)
    topic.produce(50)
    topic.produce(200, transactional_id=f"contract-{uuid.uuid4().hex[:8]}")
    ends = topic.ends()
    produced = set(topic.offsets[0])
    holes = {(0, o) for o in range(ends[0]) if o not in produced}  # markers and aborted records
    assert {(0, o) for _, o in aborted} <= holes and len(holes) > len(aborted)
    harness = Harness(topic.name, group, out, topic.bootstrap).start()
    try:
        with CommitMonitor(topic.bootstrap, group, topic.name, topic.partitions, [out]) as monitor:
            monitor.no_record = holes
            wait_until(lambda: all_committed(topic, group), 180, "the end offset to be committed", harness.tail)
            # Then a fetch that finds nothing but an aborted transaction: the committed offset moves past it too.
            before = topic.ends()[0]
            late = topic.produce(40, transactional_id=f"contract-{uuid.uuid4().hex[:8]}", abort=True)
            monitor.no_record = holes | {(0, o) for o in range(before, topic.ends()[0])}
            wait_until(lambda: all_committed(topic, group), 180, "the offset past the aborted tail", harness.tail)
        assert monitor.checks > 0 and monitor.violations == []
        assert late and topic.ends()[0] > before
    finally:
        harness.stop()
    found = chunks(out)
    delivered = sum(c.records for c in found)
    assert delivered == len(produced)  # aborted records never reach the agent
    assert processed(found, 0) >= produced
    # At least one chunk spans offsets that hold no record for the agent: a gap inside a chunk.
    assert any(c.last - c.first + 1 > c.records for c in found)


def _metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            total += float(line.rpartition(" ")[2])
    return total


def test_a_worker_on_an_empty_data_folder_recovers_its_table_from_the_changelog(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns")
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    entries = [writer.prepare(ns.name, f"k{i}", Op.UPSERT, {"color": "red", "qty": i}) for i in range(300)]
    first = WorkerProcess(ns, tmp_path / "data-1", tmp_path / "first.log").start()
    try:
        assert all(f.result(60).ok for f in [writer.submit_entry(e) for e in entries])
        wait_until(lambda: len(cassandra_rows(session, ns.keyspace)) == 300, 120, "the first worker", first.tail)
        log = topics.wal_topic(ns.name)
        ends = KafkaAdmin(endpoints.kafka_bootstrap).end_offsets(log)
        wait_until(
            lambda: committed(endpoints.kafka_bootstrap, f"walstream.{ns.name}", log, ns.namespace.partitions) == ends,
            60,
            "the first worker to commit every offset",
            first.tail,
        )
        # Compaction can bound the recovery only if segments close: the changelog was created to close them often.
        changelog = f"walstream.{ns.name}-applied-{ns.name}-changelog"
        resource = ConfigResource(ConfigResource.Type.TOPIC, changelog)
        admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})
        described = admin.describe_configs([resource])[resource].result(timeout=30)
        assert described["cleanup.policy"].value == "compact"
        assert described["segment.ms"].value == CHANGELOG_TOPIC_CONFIG["segment.ms"]
    finally:
        first.stop()
    port = free_port()
    second = WorkerProcess(ns, tmp_path / "data-2", tmp_path / "second.log", metrics_port=port).start()
    try:
        # The same entries again (same ids and sequences), then a new one to know when they were all read.
        marker = writer.prepare(ns.name, "marker", Op.UPSERT, {"color": "blue", "qty": 1})
        assert all(f.result(60).ok for f in [writer.submit_entry(e) for e in [*entries, marker]])
        wait_until(lambda: "marker" in cassandra_rows(session, ns.keyspace), 120, "the marker", second.tail)
        wait_until(
            lambda: _metric(port, "walstream_entry_results_total", namespace=ns.name, result="applied") >= 1,
            30,
            "the metrics",
        )
        # The recovered table knew every target held them: skipped without a write and counted stale (a record
        # may be read twice at start-up: Faust seeks back to the committed offsets once its recovery is over).
        # Only the marker was written.
        assert _metric(port, "walstream_entry_results_total", namespace=ns.name, result="stale") >= 300
        assert _metric(port, "walstream_entries_total", namespace=ns.name, target="primary", outcome="skipped") >= 300
        assert _metric(port, "walstream_entries_total", namespace=ns.name, target="primary", outcome="applied") == 1
        assert _metric(port, "walstream_entries_total", namespace=ns.name, target="search", outcome="applied") == 1
    finally:
        second.stop()
        writer.close()
        ns.drop(session, es)
