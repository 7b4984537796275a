"""The change topic is a faithful per-key history, whatever fails: checked against a last-writer-wins model.

Each run writes a random workload (upserts, updates and deletes over a few keys, some entries delivered twice,
some written with an older sequence than the key already has) through the SDK while one fault happens in the
middle of the stream, then checks the contract of the README's "Change events" section:

1. exactly one event for every entry that changed its key, none for an entry that changed nothing (after a
   worker crash an identical repeat is allowed);
2. per key, events in strictly increasing sequence, so replaying them in order gives the stores' state;
3. c/u/d follow the key's history;
4. an entry that was applied to one target and pending on the other is announced once, when both hold it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import NoHostAvailable, Session
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.kafka.consumer import read_to_end
from connectors.local.stack import LocalStack
from streams import topics
from streams.client.sdk import SyncWalWriter
from streams.codec import Codec
from streams.config import Settings, StackMode
from streams.model import ChangeOp, Op, WalEntry, new_entry
from tests.integration.pipeline import (
    REPO,
    ScratchNamespace,
    WorkerProcess,
    cassandra_rows,
    create_namespace,
    es_docs,
    expected_rows,
    model_of,
    wait_until,
)

pytestmark = pytest.mark.integration

sys.path.insert(0, str(REPO / "examples"))
from cdc_subscriber import materialize  # noqa: E402 - the example is a script, not a package

FAULTS = ("none", "search-frozen", "cassandra-restarted", "worker-killed")


@dataclass(frozen=True, slots=True)
class Event:
    key: str
    op: ChangeOp
    sequence: int
    entry_id: str


def workload(rng: random.Random, ns: str, keys: int, count: int) -> list[WalEntry]:
    """Entries in write order. Most carry a sequence newer than anything before; about one in eight is a late
    writer with an older sequence than its key already has; about one in twelve is written a second time."""
    base = time.time_ns() // 1_000
    clock = 0
    written: list[WalEntry] = []
    names = [f"k{i}" for i in range(keys)]
    while len(written) < count:
        roll = rng.random()
        if written and roll < 0.08:
            written.append(rng.choice(written))  # the same entry again: same id, same sequence
            continue
        clock += 10
        sequence = base + clock
        if roll < 0.2:
            sequence -= rng.randrange(10, max(clock, 20))  # a late writer: older than what came before
        key = rng.choice(names)
        if rng.random() < 0.25:
            written.append(new_entry(ns, key, Op.DELETE, b"", sequence=sequence))
        else:
            doc = {"color": rng.choice(["red", "green", "blue"]), "qty": clock}
            written.append(new_entry(ns, key, Op.UPSERT, json.dumps(doc).encode(), sequence=sequence))
    return written


def announceable(entries: Sequence[WalEntry]) -> tuple[set[str], set[str], set[str]]:
    """From the write order (which is the log order of each key): the entries newer than everything before them
    for their key (only these may ever be announced); among them, those that change their key when applied in
    that order (a delete only of a live key), which is exactly what a run without faults announces; and the
    newest upsert of each key, which is announced whatever fails. (When a retry makes an entry wait, a newer one
    may overtake it and make it change nothing: which of the others are announced then depends on timing.)"""
    newest: dict[str, WalEntry] = {}
    live: dict[str, bool] = {}
    candidates: set[str] = set()
    changing: set[str] = set()
    for entry in entries:
        previous = newest.get(entry.key)
        if previous is not None and entry.sequence <= previous.sequence:
            continue
        newest[entry.key] = entry
        candidates.add(entry.entry_id)
        was_live = live.get(entry.key, False)
        live[entry.key] = entry.op is Op.UPSERT
        if entry.op is Op.UPSERT or was_live:
            changing.add(entry.entry_id)
    final = {e.entry_id for e in newest.values() if e.op is Op.UPSERT}
    return candidates, changing, final


def read_events(endpoints: Endpoints, ns: str) -> list[Event]:
    codec = Codec()
    events = []
    for record in read_to_end(endpoints.kafka_bootstrap, topics.cdc_topic(ns)):
        e = codec.decode_change_event(record.value)
        events.append(Event(e.key, e.op, e.source.sequence, e.source.entry_id))
    return events


def check_history(events: Sequence[Event], entries: Sequence[WalEntry], fault: str) -> None:
    by_id = {e.entry_id: e for e in entries}
    candidates, changing, final = announceable(entries)
    problems: list[str] = []
    per_key: dict[str, list[Event]] = defaultdict(list)
    seen: dict[str, Event] = {}
    for event in events:
        entry = by_id.get(event.entry_id)
        if entry is None:
            problems.append(f"event for an entry never written: {event}")
            continue
        if event.sequence != entry.sequence or (event.op is ChangeOp.DELETE) != (entry.op is Op.DELETE):
            problems.append(f"event does not match its entry: {event} for {entry.op.value} {entry.sequence}")
        if event.entry_id in seen:
            if fault != "worker-killed":
                problems.append(f"event repeated without a crash: {event}")
            elif seen[event.entry_id] != event:
                problems.append(f"a repeat differs from the first: {seen[event.entry_id]} then {event}")
            continue  # an identical repeat after a crash
        seen[event.entry_id] = event
        per_key[event.key].append(event)
    # Rule 1: none for an entry older than what its key held; the newest version of every key; and without
    # faults exactly the entries that changed their key.
    announced = set(seen)
    problems += [f"event for an entry older than its key: {seen[i]}" for i in sorted(announced - candidates)]
    problems += [f"no event for the newest entry of {by_id[i].key}: {by_id[i]}" for i in sorted(final - announced)]
    if fault == "none":
        problems += [f"event for an entry that changed nothing: {seen[i]}" for i in sorted(announced - changing)]
        problems += [f"no event for an entry that changed its key: {by_id[i]}" for i in sorted(changing - announced)]
    # Rules 2 and 3, per key in topic order.
    for key, history in per_key.items():
        live = False
        last = -1
        for event in history:
            if event.sequence <= last:
                problems.append(f"{key}: sequence {event.sequence} announced after {last}")
            last = event.sequence
            if (event.op is ChangeOp.CREATE) == live:
                problems.append(f"{key}: {event.op.value} when the key was {'live' if live else 'absent'}")
            live = event.op is not ChangeOp.DELETE
    assert problems == [], "\n".join(problems[:30]) + f"\n({len(problems)} problems)"


def replay(events: Sequence[Event], entries: Sequence[WalEntry]) -> dict[str, tuple[Any, ...]]:
    """The state a subscriber reaches applying the events in topic order."""
    by_id = {e.entry_id: e for e in entries}
    state: dict[str, tuple[Any, ...]] = {}
    for event in events:
        if event.op is ChangeOp.DELETE:
            state.pop(event.key, None)
        else:
            doc = json.loads(by_id[event.entry_id].payload)
            state[event.key] = (doc["color"], doc["qty"])
    return state


@pytest.fixture
def stack(settings: Settings, endpoints: Endpoints) -> LocalStack:
    if settings.mode is not StackMode.LOCAL:
        pytest.skip("faults are made on the local stack's own processes")
    return LocalStack(settings.local)


@pytest.fixture
def seed() -> int:
    return int(os.environ.get("CDC_TEST_SEED") or random.randrange(1 << 32))


class Fault:
    """One fault, started after a third of the workload and ended after two thirds (or when the test ends)."""

    def __init__(self, kind: str, settings: Settings, worker: WorkerProcess, stack: LocalStack) -> None:
        self.kind = kind
        self._settings = settings
        self._worker = worker
        self._stack = stack
        self._frozen: list[int] = []
        self._started = 0.0

    def begin(self) -> None:
        self._started = time.monotonic()
        if self.kind == "search-frozen":
            self._frozen = self._stack.signal_service("elasticsearch", signal.SIGSTOP)
        elif self.kind == "cassandra-restarted":
            LocalStack(self._settings.local, services=["cassandra"]).down()
        elif self.kind == "worker-killed":
            self._worker.kill()

    def end(self) -> None:
        if self.kind == "search-frozen" and self._frozen:
            time.sleep(max(0.0, 30 - (time.monotonic() - self._started)))  # a freeze of at least 30 s
            for pid in self._frozen:
                os.kill(pid, signal.SIGCONT)
            self._frozen = []
        elif self.kind == "cassandra-restarted":
            LocalStack(self._settings.local, services=["cassandra"]).up()
        elif self.kind == "worker-killed" and not self._worker.alive():
            self._worker.start()


def write(endpoints: Endpoints, ns: ScratchNamespace, entries: Sequence[WalEntry]) -> None:
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {ns.name: ns.namespace})
    try:
        for start in range(0, len(entries), 100):
            chunk = entries[start : start + 100]
            assert all(f.result(60).ok for f in [writer.submit_entry(e) for e in chunk])
            time.sleep(0.05)  # a steady stream rather than one burst
    finally:
        writer.close()


def chunks(entries: list[WalEntry]) -> Iterator[list[WalEntry]]:
    third = len(entries) // 3
    yield entries[:third]
    yield entries[third : 2 * third]
    yield entries[2 * third :]


@pytest.mark.parametrize("fault", FAULTS)
def test_the_change_topic_is_a_faithful_history(
    fault: str,
    seed: int,
    settings: Settings,
    stack: LocalStack,
    endpoints: Endpoints,
    stores: tuple[Session, Elasticsearch],
    tmp_path: Path,
) -> None:
    session, es = stores
    ns = create_namespace(endpoints, tmp_path / "ns", retry={"tiers": ["1s", "5s"], "max_attempts": 100})
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log").start()
    entries = workload(random.Random(seed), ns.name, keys=40, count=1500)
    trouble = Fault(fault, settings, worker, stack)
    context = f"seed {seed} (CDC_TEST_SEED={seed} repeats this workload), fault {fault}"
    try:
        first, middle, last = chunks(entries)
        write(endpoints, ns, first)
        # The fault strikes a worker that is applying entries, not one that is still starting.
        wait_until(lambda: bool(read_events(endpoints, ns.name)), 120, "the worker to apply entries", worker.tail)
        trouble.begin()
        try:
            write(endpoints, ns, middle)
        finally:
            trouble.end()
        write(endpoints, ns, last)

        want = expected_rows(model_of(entries))

        def cassandra_converged() -> bool:
            try:
                return cassandra_rows(session, ns.keyspace) == want
            except NoHostAvailable:
                return False  # this test's own session is still reconnecting after the restart

        wait_until(cassandra_converged, 300, f"cassandra to converge ({context})", worker.tail)
        wait_until(lambda: es_docs(es, ns.index) == want, 300, f"search to converge ({context})", worker.tail)
        # The history is complete once replaying it gives the stores' state.
        wait_until(
            lambda: replay(read_events(endpoints, ns.name), entries) == want,
            120,
            f"the change topic to reach the stores' state ({context})",
            worker.tail,
        )
        events = read_events(endpoints, ns.name)
        check_history(events, entries, fault)
        # The example subscriber materializes the same state as Cassandra holds.
        subscribed = materialize(endpoints.kafka_bootstrap, ns.name)
        assert {k: (v["color"], v["qty"]) for k, v in subscribed.items()} == cassandra_rows(session, ns.keyspace)
        # A store's outage is told once at WARNING with its duration, never as errors that page a person.
        lines = [json.loads(line) for line in worker.log.read_text().splitlines() if line.startswith("{")]
        assert [line for line in lines if line["level"] in ("error", "critical")] == []
        if fault in ("search-frozen", "cassandra-restarted"):
            told = [line["message"] for line in lines if "answers again after an outage of" in line["message"]]
            assert told, "the end of the outage was not told"
    except AssertionError as exc:
        raise AssertionError(f"{context}: {exc}") from None
    finally:
        worker.stop()
        ns.drop(session, es)
