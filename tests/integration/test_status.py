"""`walstream status` on the real stack: lag and its age with the worker stopped, a poison record's dead letter and
its reason, entries held in a retry tier with their next due time, the flood guard from /readyz, errors that exit
2, and `--watch` redrawing in place under a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cassandra.cluster import Session
from confluent_kafka import Producer
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.codec import Codec
from streams.config import Settings, StackMode
from streams.model import Op, Origin, RetryEnvelope, new_entry
from streams.namespaces import load_namespace
from streams.worker.targets import topic_specs
from tests.integration.pipeline import (
    REPO,
    ScratchNamespace,
    WorkerProcess,
    cassandra_rows,
    create_namespace,
    free_port,
    namespace_document,
    own_stack,
    wait_until,
)

pytestmark = pytest.mark.integration


def _env(ns: ScratchNamespace, **more: str) -> dict[str, str]:
    """The settings a process needs to find the shared stack and the test's namespace."""
    eps = ns.endpoints
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        "WALSTREAM_NAMESPACE_DIR": str(ns.directory),
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_BOOTSTRAP": eps.kafka_bootstrap,
        "WALSTREAM_CASSANDRA_CONTACT": f"{eps.cassandra_host}:{eps.cassandra_port}",
        "WALSTREAM_ELASTICSEARCH_URL": eps.elasticsearch_url,
        **more,
    }


def _run(ns: ScratchNamespace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", "status", *args],
        cwd=REPO,
        env=_env(ns, **env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _status(ns: ScratchNamespace, *args: str) -> dict[str, Any]:
    """`walstream status NS --json`: the namespace's document, and the workers' under "workers"."""
    done = _run(ns, ns.name, "--json", *args)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    (found,) = doc["namespaces"]
    assert found["namespace"] == ns.name
    return {**found, "workers": doc["workers"]}


def test_status_shows_lag_and_its_age_dead_letters_and_retry_tiers(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=2, retry={"tiers": ["1s", "10s"], "max_attempts": 5})
    port = free_port()
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log", metrics_port=port).start()
    codec = Codec()
    raw = Producer({"bootstrap.servers": endpoints.kafka_bootstrap})
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        assert writer.write(ns.name, "warm-up", Op.UPSERT, {"color": "white", "qty": 0}).ok
        wait_until(lambda: "warm-up" in cassandra_rows(session, ns.keyspace), 120, "the worker to start", worker.tail)

        # A poison record: an entry of a namespace this log does not hold goes straight to the DLQ.
        stray = codec.encode_entry(new_entry("elsewhere", "stray", Op.DELETE, b""))
        raw.produce(topics.wal_topic(ns.name), key=b"poison", value=stray, partition=0)
        # Entries held in the 10s tier: due in ten minutes, so they are still waiting when status looks. Each
        # partition is first-in first-out by due time; the earliest head is partition 0's first.
        first_due = int(time.time() * 1000) + 600_000
        held = 0
        for partition in range(ns.namespace.partitions):
            for i in range(3):
                entry = new_entry(ns.name, f"held-{partition}-{i}", Op.UPSERT, b'{"color": "gold", "qty": 1}')
                due = first_due + partition * 7_000 + i * 1_000
                origin = Origin(topics.wal_topic(ns.name), partition, 0)
                envelope = RetryEnvelope(entry, 1, due, ("primary", "search"), "boom", "boom", origin, "10s")
                raw.produce(
                    topics.retry_topic(ns.name, "10s"),
                    key=entry.key.encode(),
                    value=codec.encode_retry_envelope(envelope),
                    partition=partition,
                )
                held += 1
        assert raw.flush(30) == 0

        seen: dict[str, Any] = {}

        def caught_up() -> bool:
            seen.update(_status(ns, "--workers", f"127.0.0.1:{port}"))
            return seen["dlq"]["last_hour"] == 1 and seen["lag"]["total"] == 0

        wait_until(caught_up, 180, "status to show the dead letter and no lag", lambda: json.dumps(seen, indent=1))
        # The worker answers /readyz: the flood guard does not hold the namespace.
        (answer,) = seen["workers"]
        assert answer["reached"] and answer["held"] == [] and answer["dependencies_down"] == [], answer
        assert seen["flood_guard_held"] is False
        assert seen["lag"]["group"] == topics.consumer_group(ns.name)

        assert worker.stop() is not None
        before_ms = int(time.time() * 1000)
        entries = [writer.prepare(ns.name, f"late-{i}", Op.UPSERT, {"color": "red", "qty": i}) for i in range(25)]
        assert all(f.result(60).ok for f in [writer.submit_entry(e) for e in entries])
        after_ms = int(time.time() * 1000)
        time.sleep(2)  # an age worth measuring

        found = _status(ns)
        lag = found["lag"]
        assert lag["total"] == len(entries), lag
        assert sum(p["lag"] for p in lag["partitions"]) == len(entries)
        for p in lag["partitions"]:
            # A partition the group never committed on is read from its start (offset 0: nothing was removed).
            assert p["lag"] == p["end"] - (p["committed"] or 0), p
            assert (p["oldest_ms"] is None) == (p["lag"] == 0), p
        # The oldest unapplied entry was written while the test wrote the late entries, and its age counts from then.
        assert before_ms - 1000 <= lag["oldest_ms"] <= after_ms + 1000, (before_ms, lag, after_ms)
        assert lag["age_s"] == pytest.approx((found["at_ms"] - lag["oldest_ms"]) / 1000, abs=0.01)
        assert lag["age_s"] >= 2.0 - 1.0

        tiers = {t["tier"]: t for t in found["tiers"]}
        assert tiers["10s"]["waiting"] == held
        assert tiers["10s"]["next_due_ms"] == first_due
        assert tiers["10s"]["next_due_in_s"] > 0
        assert tiers["1s"]["waiting"] == 0 and tiers["1s"]["next_due_ms"] is None

        dlq = found["dlq"]
        assert dlq["retained"] == 1 and dlq["last_hour"] == 1, dlq
        (reason,) = dlq["top_reasons"]
        assert reason["error_class"] == "undecodable" and reason["count"] == 1
        assert "unknown-namespace" in reason["reason"], reason
        # No worker address given now: the flood guard's state is not known.
        assert found["flood_guard_held"] is None

        # The same look as a screen.
        screen = _run(ns, ns.name, COLUMNS="160")
        assert screen.returncode == 0, screen.stderr
        assert f"lag {len(entries)} entries, oldest written" in screen.stdout, screen.stdout
        assert "unknown-namespace" in screen.stdout
    finally:
        writer.close()
        worker.stop()
        ns.drop(session, es)


def test_status_counts_what_a_failing_target_sent_to_a_retry_tier(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    """The search index refuses writes with 429 (a read-only-allow-delete block, as at the disk's flood stage):
    the worker sends the entries to the first tier, and status counts them there with their due time."""
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=2, retry={"tiers": ["10m", "1h"], "max_attempts": 5})
    es.indices.put_settings(index=ns.index, settings={"index.blocks.read_only_allow_delete": True})
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        before_ms = int(time.time() * 1000)
        entries = [writer.prepare(ns.name, f"k{i}", Op.UPSERT, {"color": "blue", "qty": i}) for i in range(10)]
        assert all(f.result(60).ok for f in [writer.submit_entry(e) for e in entries])
        seen: dict[str, Any] = {}

        def in_the_tier() -> bool:
            seen.update(_status(ns))
            waiting = {t["tier"]: t["waiting"] for t in seen["tiers"]}
            return waiting == {"10m": len(entries), "1h": 0} and seen["lag"]["total"] == 0  # the log committed

        wait_until(in_the_tier, 180, "the entries to wait in the 10m tier", lambda: json.dumps(seen) + worker.tail())
        (tier, _) = seen["tiers"]
        # Each entry is due ten minutes after its failed try, which came after it was written and before status
        # looked.
        assert before_ms + 600_000 <= tier["next_due_ms"] <= seen["at_ms"] + 600_000, (before_ms, tier)
        assert 0 < tier["next_due_in_s"] <= 600
        assert seen["dlq"]["retained"] == 0
        assert len(cassandra_rows(session, ns.keyspace)) == len(entries)  # the primary store took them at once
    finally:
        es.indices.put_settings(index=ns.index, settings={"index.blocks.read_only_allow_delete": None})
        writer.close()
        worker.stop()
        ns.drop(session, es)


def test_status_shows_the_flood_guard_holding_a_namespace(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=1, retry={"dlq_max_per_minute": 3})
    port = free_port()
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log", metrics_port=port).start()
    raw = Producer({"bootstrap.servers": endpoints.kafka_bootstrap})
    try:
        for i in range(12):
            raw.produce(topics.wal_topic(ns.name), key=b"junk", value=b"garbage-%d" % i)
        assert raw.flush(30) == 0
        seen: dict[str, Any] = {}

        def held() -> bool:
            seen.update(_status(ns, "--workers", f"127.0.0.1:{port}"))
            return seen["flood_guard_held"] is True

        wait_until(held, 180, "status to show the flood guard holding", lambda: json.dumps(seen, indent=1))
        (answer,) = seen["workers"]
        assert answer["reached"] and not answer["ready"] and answer["held"] == [ns.name], answer
        # Held, not drained: what the guard let through is in the DLQ, the rest waits in the log.
        assert 0 < seen["dlq"]["last_hour"] <= 3
        assert seen["lag"]["total"] > 0
        assert seen["dlq"]["top_reasons"][0]["error_class"] == "undecodable"
        screen = _run(ns, ns.name, "--workers", f"127.0.0.1:{port}", COLUMNS="160")
        assert "flood guard: HOLDING the namespace" in screen.stdout, screen.stdout
    finally:
        worker.stop()
        ns.drop(session, es)


def test_status_refuses_an_unknown_namespace_and_an_unreachable_kafka(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=1)
    try:
        unknown = _run(ns, "no_such_namespace")
        assert unknown.returncode == 2
        assert "unknown namespace(s) no_such_namespace" in unknown.stderr, unknown.stderr

        empty = tmp_path / "empty"
        empty.mkdir()
        nothing = _run(ns, WALSTREAM_NAMESPACE_DIR=str(empty))
        assert nothing.returncode == 2
        assert f"no namespaces in {empty}" in nothing.stderr, nothing.stderr

        bad_workers = _run(ns, ns.name, "--workers", "nowhere")
        assert bad_workers.returncode == 2
        assert "--workers: 'nowhere' must look like host:port" in bad_workers.stderr, bad_workers.stderr

        nobody = f"127.0.0.1:{free_port()}"
        unreachable = _run(ns, ns.name, WALSTREAM_KAFKA_BOOTSTRAP=nobody)
        assert unreachable.returncode == 2
        assert f"Kafka at {nobody} does not answer" in unreachable.stderr, unreachable.stderr[-2000:]
    finally:
        ns.drop(session, es)


def test_status_reads_a_secured_kafka_with_the_clusters_client_settings(settings: Settings, tmp_path: Path) -> None:
    """A Kafka of the test's own with TLS and SCRAM passwords: status reads it with `walstream stack env`'s Kafka
    settings, names the setting when the password is wrong, and never prints the password."""
    if settings.mode is not StackMode.LOCAL:
        pytest.skip(f"the secured embedded stack does not apply in {settings.mode.value} mode")
    with own_stack(settings.local, "walstream-status-secure-", services=["kafka"], secure=True) as stack:
        endpoints = stack.endpoints()
        path = tmp_path / "ns" / "secured.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(namespace_document("secured", partitions=2)))
        ns = load_namespace(path)
        KafkaAdmin(endpoints.kafka).ensure_topics(topic_specs(ns))
        writer = SyncWalWriter(endpoints.kafka, {ns.name: ns})
        try:
            written = [writer.submit_entry(writer.prepare(ns.name, f"k{i}", Op.UPSERT, {"qty": i})) for i in range(12)]
            assert all(f.result(60).ok for f in written)
        finally:
            writer.close()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
            **{k: v for k, v in stack.client_env().items() if k.startswith(("WALSTREAM_KAFKA_", "WALSTREAM_STACK"))},
            "WALSTREAM_NAMESPACE_DIR": str(path.parent),
        }
        assert env["WALSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"

        def status(**more: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "streams", "status", ns.name, "--json"],
                cwd=REPO,
                env={**env, **more},
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )

        done = status()
        assert done.returncode == 0, done.stderr
        (found,) = json.loads(done.stdout)["namespaces"]
        assert found["lag"]["group"] is None and found["lag"]["total"] == len(written)
        assert found["lag"]["oldest_ms"] is not None

        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-the-password\n")
        refused = status(WALSTREAM_KAFKA_PASSWORD_FILE=str(wrong))
        assert refused.returncode == 2
        assert "WALSTREAM_KAFKA_PASSWORD" in refused.stderr, refused.stderr[-2000:]
        password = stack.secrets.password(stack.secrets.kafka_password_file)
        assert not [out for out in (done.stdout, done.stderr, refused.stdout, refused.stderr) if password in out]


def test_status_watch_rides_out_a_kafka_outage(settings: Settings, tmp_path: Path) -> None:
    """A Kafka of the test's own is frozen under `status --watch --json`: the looks that fail say so, and the
    watch goes on looking once Kafka answers again."""
    if settings.mode is not StackMode.LOCAL:
        pytest.skip(f"a Kafka of the test's own needs the local mode, not {settings.mode.value}")
    with own_stack(settings.local, "walstream-status-outage-", services=["kafka"]) as stack:
        bootstrap = stack.endpoints().kafka_bootstrap
        path = tmp_path / "ns" / "outage.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(namespace_document("outage", partitions=2)))
        ns = load_namespace(path)
        KafkaAdmin(bootstrap).ensure_topics(topic_specs(ns))
        writer = SyncWalWriter(bootstrap, {ns.name: ns})
        try:
            waiting = [writer.submit_entry(writer.prepare(ns.name, f"k{i}", Op.UPSERT, {"qty": i})) for i in range(5)]
            assert all(f.result(60).ok for f in waiting)
        finally:
            writer.close()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
            "WALSTREAM_STACK_MODE": "external",
            "WALSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "WALSTREAM_NAMESPACE_DIR": str(path.parent),
        }
        watch = subprocess.Popen(
            [sys.executable, "-m", "streams", "status", ns.name, "--watch", "--json", "--interval", "1"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        looks: list[str] = []
        complaints: list[str] = []
        assert watch.stdout is not None and watch.stderr is not None
        readers = [
            threading.Thread(target=looks.extend, args=(watch.stdout,), daemon=True),
            threading.Thread(target=complaints.extend, args=(watch.stderr,), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            wait_until(lambda: len(looks) >= 3, 120, "three looks", lambda: "".join(complaints[-20:]))
            # Every look finds the oldest waiting entry again (no look is left with the last one's reading state).
            for line in looks[:3]:
                (lag,) = [ns_["lag"] for ns_ in json.loads(line)["namespaces"]]
                assert lag["total"] == len(waiting) and lag["oldest_ms"] is not None, lag
            stack.signal_service("kafka", signal.SIGSTOP)
            try:
                wait_until(
                    lambda: any("does not answer" in line for line in complaints),
                    120,
                    "a look that fails while Kafka is frozen",
                    lambda: "".join(complaints[-20:]),
                )
            finally:
                stack.signal_service("kafka", signal.SIGCONT)
            seen = len(looks)
            wait_until(lambda: len(looks) > seen, 120, "a look once Kafka answers", lambda: "".join(complaints[-20:]))
            assert watch.poll() is None
            (found,) = json.loads(looks[-1])["namespaces"]
            assert found["namespace"] == ns.name and found["lag"]["total"] == len(waiting)
            assert found["lag"]["oldest_ms"] is not None
        finally:
            if watch.poll() is None:
                watch.send_signal(signal.SIGINT)
            try:
                code = watch.wait(timeout=60)
            except subprocess.TimeoutExpired:
                watch.kill()
                code = watch.wait(timeout=30)
            for reader in readers:
                reader.join(timeout=10)
    assert code == 0


#: The header line of every frame `--watch` draws: its look number.
_FRAME = re.compile(r"walstream status +#(\d+)")


def test_status_watch_redraws_in_place_under_a_terminal(
    endpoints: Endpoints, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", partitions=1)
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    watch = subprocess.Popen(
        [sys.executable, "-m", "streams", "status", ns.name, "--watch", "--interval", "1"],
        cwd=REPO,
        env={**_env(ns), "TERM": "xterm-256color"},
        stdin=terminal,
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(terminal)
    screen = b""
    try:
        deadline = time.monotonic() + 120
        frames: set[str] = set()
        while time.monotonic() < deadline and len(frames) < 3:
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                try:
                    screen += os.read(main, 65536)
                except OSError:  # the terminal closed: the command ended
                    break
            frames = set(_FRAME.findall(screen.decode(errors="replace")))
        text = screen.decode(errors="replace")
        assert len(frames) >= 3, f"fewer than three frames were drawn:\n{text[-3000:]}"
        # Frames after the first are drawn over it: the cursor goes back up and lines are erased, not appended.
        after_first = text[text.index("#1") :]
        assert re.search(r"\x1b\[\d*A", after_first) and "\x1b[2K" in after_first, repr(after_first[-2000:])
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
        assert plain.count(f"─ {ns.name} ") >= 3  # the namespace's panel, in every frame
        assert watch.poll() is None  # still watching
    finally:
        if watch.poll() is None:
            watch.send_signal(signal.SIGINT)
        try:
            code = watch.wait(timeout=30)
        except subprocess.TimeoutExpired:
            watch.kill()
            code = watch.wait(timeout=30)
        os.close(main)
        ns.drop(session, es)
    assert code == 0  # Ctrl-C ends the watch cleanly
