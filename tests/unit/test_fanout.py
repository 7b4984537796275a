"""FanoutProcessor with a real Applier on in-memory sinks and producer: state across batches, durability, decoding."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from streams import topics
from streams.codec import Codec
from streams.core.dispatch import KeyState
from streams.core.flood import FloodGuard
from streams.metrics import Metrics
from streams.model import ChangeOp, Op, Origin, WalEntry, new_entry
from streams.namespaces import Namespace, parse_namespace
from streams.pipeline.apply import NotDurable, Record
from streams.pipeline.build import build_applier
from streams.pipeline.fanout import FanoutProcessor
from streams.ports import Durable, Outcome
from tests.unit.fakes import MemoryProducer, MemorySink, MemoryTable

NS = "orders"
CODEC = Codec()


def namespace() -> Namespace:
    return parse_namespace(
        {
            "name": NS,
            "targets": {
                "primary": {
                    "type": "cassandra",
                    "keyspace": "k",
                    "table": "t",
                    "key_column": "id",
                    "columns": {"v": {"type": "bigint"}},
                },
                "search": {"type": "elasticsearch", "index": "i", "fields": {"v": "long"}},
            },
        }
    )


class Rig:
    """A processor over two memory sinks and a memory producer, with a plain dict as the idempotency table."""

    def __init__(self, guard: FloodGuard | None = None) -> None:
        self.producer = MemoryProducer()
        self.primary, self.search = MemorySink("primary"), MemorySink("search")
        self.table = MemoryTable()
        sinks = {"primary": self.primary, "search": self.search}
        applier = build_applier(namespace(), sinks, self.producer, Metrics(), guard=guard, breakers=False, hold_s=0.01)
        self.processor = FanoutProcessor(applier, self.table)
        self.offset = 0

    def record(self, entry: WalEntry | bytes, attempt: int = 0) -> Record:
        value = entry if isinstance(entry, bytes) else CODEC.encode_entry(entry)
        self.offset += 1
        key = entry.key.encode() if isinstance(entry, WalEntry) else b"?"
        origin = Origin(topics.wal_topic(NS), 0, self.offset)
        return Record(key, value, origin, attempt, "search is down" if attempt else None)

    def events(self) -> list[tuple[str, ChangeOp, int]]:
        """The change events sent: (key, op, sequence), in order."""
        decoded = (CODEC.decode_change_event(s.value or b"") for s in self.producer.to(topics.cdc_topic(NS)))
        return [(e.key, e.op, e.source.sequence) for e in decoded]

    def state(self, key: str) -> KeyState:
        return KeyState.from_json(self.table.get(key.encode()))


def entry(key: str, seq: int, op: Op = Op.UPSERT) -> WalEntry:
    payload = b"" if op is Op.DELETE else json.dumps({"v": seq}).encode()
    return new_entry(NS, key, op, payload, sequence=seq)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def test_an_overlapping_batch_sees_the_state_the_batch_before_it_left() -> None:
    async def scenario() -> None:
        rig = Rig()
        cdc = topics.cdc_topic(NS)
        rig.producer.hold(cdc)  # the first batch waits for its change events
        first = asyncio.create_task(rig.processor.process([rig.record(entry("k", 5))]))
        await until(lambda: len(rig.producer.to(cdc)) == 1, "the first batch's change event")
        assert rig.table.data == {} and rig.table.changelog == []  # nothing before the events are durable
        # The second batch runs while the first is unsettled: an older version of k changes nothing.
        second = asyncio.create_task(rig.processor.process([rig.record(entry("k", 3)), rig.record(entry("j", 1))]))
        await until(lambda: len(rig.producer.to(cdc)) == 2, "the second batch's change event")
        assert rig.primary.rows["k"][0] == 5 and rig.primary.writes == 2  # k@3 was never written
        await asyncio.sleep(0.01)
        assert not second.done()  # it finishes only after the batch before it
        rig.producer.release(cdc)
        await asyncio.gather(first, second)
        assert rig.events() == [("k", ChangeOp.CREATE, 5), ("j", ChangeOp.CREATE, 1)]
        assert rig.state("k").version == 5 and rig.state("k").applied == {"primary": 5, "search": 5}
        assert rig.state("j").version == 1

    run(scenario)


def test_c_u_d_follow_the_keys_history_across_batches() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.processor.process([rig.record(entry("k", 1))])
        await rig.processor.process([rig.record(entry("k", 2)), rig.record(entry("k", 3, Op.DELETE))])
        await rig.processor.process([rig.record(entry("k", 3, Op.DELETE)), rig.record(entry("k", 4))])
        assert rig.events() == [
            ("k", ChangeOp.CREATE, 1),
            ("k", ChangeOp.UPDATE, 2),
            ("k", ChangeOp.DELETE, 3),
            ("k", ChangeOp.CREATE, 4),  # the duplicate delete announced nothing
        ]

    run(scenario)


def test_a_lost_change_event_means_no_ack_and_no_state() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.producer.fail(topics.cdc_topic(NS), Durable.UNKNOWN)
        with pytest.raises(NotDurable):
            await rig.processor.process([rig.record(entry("k", 1))])
        assert rig.table.data == {} and rig.table.changelog == []  # a restart reads it again, skips nothing
        rig.producer.recover(topics.cdc_topic(NS))
        with pytest.raises(NotDurable):  # and nothing after a failed batch is processed either
            await rig.processor.process([rig.record(entry("j", 1))])
        assert "j" not in rig.primary.rows

    run(scenario)


def test_an_undecodable_record_goes_to_the_dlq_and_the_rest_is_applied() -> None:
    async def scenario() -> None:
        rig = Rig()
        other = new_entry("payments", "p", Op.UPSERT, b"{}", sequence=1)
        await rig.processor.process(
            [rig.record(entry("a", 1)), rig.record(b"\x00garbage"), rig.record(other), rig.record(entry("b", 1))]
        )
        letters = [CODEC.decode_dead_letter(s.value or b"") for s in rig.producer.to(topics.dlq_topic(NS))]
        assert sorted(letter.error_class for letter in letters) == ["undecodable", "undecodable"]
        assert any("unknown-namespace" in letter.reason for letter in letters)
        assert set(rig.primary.rows) == set(rig.search.rows) == {"a", "b"}
        assert [key for key, _, _ in rig.events()] == ["a", "b"]

    run(scenario)


def test_a_target_that_fails_sends_the_entry_to_a_retry_tier_with_only_that_target() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.search.fail = Outcome.RETRYABLE
        await rig.processor.process([rig.record(entry("k", 1))])
        retried = [s for s in rig.producer.sent if s.topic.startswith(f"wal.{NS}.retry.")]
        assert len(retried) == 1 and retried[0].partition == 0
        envelope = CODEC.decode_retry_envelope(retried[0].value or b"")
        assert envelope.pending_targets == ("search",) and envelope.attempt == 1
        assert rig.events() == []  # announced only once every target holds it
        assert rig.state("k").applied == {"primary": 1}

    run(scenario)


def test_the_flood_guard_holds_undecodable_records_instead_of_draining_them() -> None:
    async def scenario() -> None:
        guard = FloodGuard(NS, per_minute=2)
        rig = Rig(guard)
        junk = [rig.record(b"\x00junk-%d" % i) for i in range(5)]
        task = asyncio.create_task(rig.processor.process([*junk, rig.record(entry("behind", 1))]))
        await until(lambda: guard.holding, "the guard to hold the namespace")
        await asyncio.sleep(0.05)
        assert len(rig.producer.to(topics.dlq_topic(NS))) == 2  # the limit, not the whole flood
        assert "behind" not in rig.primary.rows and not task.done()  # held in order, not skipped
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario)


def test_a_handed_back_entry_is_applied_where_pending_and_announced_once() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.search.fail = Outcome.RETRYABLE
        first = entry("k", 1)
        await rig.processor.process([rig.record(first)])
        rig.search.fail = None
        primary_writes = rig.primary.writes
        await rig.processor.process([rig.record(first, attempt=1)])  # the retry tier hands it back
        assert rig.primary.writes == primary_writes  # only the target that needed it was written
        assert rig.search.rows["k"][0] == 1
        assert rig.events() == [("k", ChangeOp.CREATE, 1)]
        await rig.processor.process([rig.record(first, attempt=1)])  # handed back twice: changes nothing
        assert rig.events() == [("k", ChangeOp.CREATE, 1)]

    run(scenario)


def test_a_handed_back_entry_that_a_newer_one_overtook_is_dropped_silently() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.search.fail = Outcome.RETRYABLE
        old = entry("k", 1)
        await rig.processor.process([rig.record(old)])
        rig.search.fail = None
        await rig.processor.process([rig.record(entry("k", 2))])
        await rig.processor.process([rig.record(old, attempt=1)])
        assert rig.events() == [("k", ChangeOp.CREATE, 2)]  # never an older version after a newer one
        assert rig.search.rows["k"][0] == 2 and rig.primary.rows["k"][0] == 2

    run(scenario)


def test_a_handed_back_entry_failing_again_carries_its_attempts_on() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.search.fail = Outcome.RETRYABLE
        await rig.processor.process([rig.record(entry("k", 1), attempt=3)])
        (retried,) = [s for s in rig.producer.sent if s.topic.startswith(f"wal.{NS}.retry.")]
        envelope = CODEC.decode_retry_envelope(retried.value or b"")
        assert envelope.attempt == 4 and envelope.first_error == "search is down"

    run(scenario)


def test_state_is_set_only_after_its_changelog_is_durable_and_on_the_records_partition() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.table.failing = True
        record = rig.record(entry("k", 1))
        record = Record(record.key, record.value, Origin(record.origin.topic, 2, record.origin.offset))
        with pytest.raises(NotDurable):
            await rig.processor.process([record])
        assert rig.table.data == {}  # the change event went out, the state did not: a restart re-announces it
        ok = Rig()
        await ok.processor.process([record])
        ((key, partition, value),) = ok.table.changelog
        assert key == b"k" and partition == 2 and ok.table.data[b"k"] == value

    run(scenario)
