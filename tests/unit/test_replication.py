"""Cross-region replication's pure parts: composite versions, ties between regions, logs and origin regions."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from streams.client.failover import FailoverWriter
from streams.client.sdk import WalWriter
from streams.core.dispatch import Dispatcher, KeyState
from streams.core.versions import MAX_REPLICATED_SEQUENCE, rank_of, replicated_version, sequence_of
from streams.model import ChangeOp, Op, WalEntry, new_entry
from streams.namespaces import NamespaceError, parse_namespace
from streams.ports import Durable
from streams.topics import origin_region, region_logs
from tests.unit.fakes import MemoryProducer, MemorySink


def _entry(key: str, seq: int, value: str, op: Op = Op.UPSERT) -> WalEntry:
    payload = b"" if op is Op.DELETE else json.dumps({"v": value}).encode()
    return new_entry("ns", key, op, payload, sequence=seq)


def _doc(**extra: Any) -> dict[str, Any]:
    return {
        "name": "orders",
        "targets": {
            "db": {"type": "cassandra", "keyspace": "shop", "table": "t", "key_column": "id", "columns": {}},
            "search": {"type": "elasticsearch", "index": "orders", "fields": {}},
        },
        **extra,
    }


def test_a_newer_sequence_always_wins_and_equal_sequences_go_to_the_later_region() -> None:
    assert replicated_version(100, 0) > replicated_version(99, 15)
    assert replicated_version(100, 1) > replicated_version(100, 0)
    version = replicated_version(1_764_000_000_000_000, 3)
    assert (sequence_of(version), rank_of(version)) == (1_764_000_000_000_000, 3)
    assert replicated_version(MAX_REPLICATED_SEQUENCE, 15) <= (1 << 63) - 1


def test_a_sequence_that_would_overflow_is_refused() -> None:
    with pytest.raises(ValueError, match="largest a replicated namespace takes"):
        replicated_version(MAX_REPLICATED_SEQUENCE + 1, 0)
    with pytest.raises(ValueError, match="rank"):
        replicated_version(1, 16)


def _dispatch(entries: list[WalEntry], ranks: list[int], state: dict[str, KeyState], sinks: dict[str, MemorySink]):  # type: ignore[no-untyped-def]
    d = Dispatcher(sinks, lambda raw: json.loads(raw))
    versions = [replicated_version(e.sequence, r) for e, r in zip(entries, ranks, strict=True)]
    return asyncio.run(d.dispatch(entries, state, versions))


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_equal_sequences_from_two_regions_converge_whatever_the_order(order: tuple[int, int]) -> None:
    writes = {0: _entry("k", 500, "east"), 1: _entry("k", 500, "west")}
    sinks = {"a": MemorySink("a"), "b": MemorySink("b")}
    state: dict[str, KeyState] = {}
    events = []
    for rank in order:
        result = _dispatch([writes[rank]], [rank], state, sinks)
        state = result.state
        events += [o.change for o in result.outcomes if o.change is not None]
    assert sinks["a"].live() == sinks["b"].live() == {"k": {"v": "west"}}
    assert state["k"].version == replicated_version(500, 1)
    # The winner is announced once; a loser arriving second changes nothing and announces nothing.
    assert events in ([ChangeOp.CREATE, ChangeOp.UPDATE], [ChangeOp.CREATE])


def test_a_redelivered_replicated_entry_writes_nothing_and_announces_nothing() -> None:
    sinks = {"a": MemorySink("a")}
    first = _dispatch([_entry("k", 7, "x")], [1], {}, sinks)
    writes = sinks["a"].writes
    again = _dispatch([_entry("k", 7, "x")], [1], first.state, sinks)
    assert sinks["a"].writes == writes
    assert all(o.duplicate and o.change is None for o in again.outcomes)


def test_a_delete_with_an_equal_sequence_wins_only_from_the_later_region() -> None:
    sinks = {"a": MemorySink("a")}
    state = _dispatch([_entry("k", 9, "west")], [1], {}, sinks).state
    _dispatch([_entry("k", 9, "", Op.DELETE)], [0], state, sinks)
    assert sinks["a"].live() == {"k": {"v": "west"}}


def test_the_replication_section_is_strictly_validated() -> None:
    ns = parse_namespace(_doc(replication={"regions": ["east", "west"], "failover": True}))
    assert ns.replication is not None and ns.replication.failover
    for bad, message in (
        ({"regions": ["east"]}, "2 to 16 regions"),
        ({"regions": ["east", "east"]}, "listed twice"),
        ({"regions": ["east", "West"]}, "not a region name"),
        ({"regions": ["east", "west"], "fail": True}, "unknown key"),
        ({"regions": ["east", "west"], "failover": "yes"}, "replication.failover"),
    ):
        with pytest.raises(NamespaceError, match=message):
            parse_namespace(_doc(replication=bad))


def test_an_sqs_namespace_cannot_be_replicated() -> None:
    with pytest.raises(NamespaceError, match="replication: cross-region replication needs backend: kafka"):
        parse_namespace(_doc(backend="sqs", replication={"regions": ["east", "west"]}))


def test_a_region_consumes_its_log_and_the_others_and_keeps_its_stores_apart() -> None:
    ns = parse_namespace(_doc(replication={"regions": ["east", "west"]}))
    west = ns.in_region("west", "_west")
    assert west.logs() == ("wal.orders", "east.wal.orders")
    assert (west.origin_rank("wal.orders"), west.origin_rank("east.wal.orders")) == (1, 0)
    assert west.targets["db"].keyspace == "shop_west"  # type: ignore[union-attr]
    assert west.targets["search"].index == "orders-west"  # type: ignore[union-attr]
    assert ns.logs() == ("wal.orders",) and not ns.replicated
    with pytest.raises(ValueError, match="not 'north'"):
        ns.in_region("north")
    assert region_logs("orders", ["a", "b", "c"], "b") == ("wal.orders", "a.wal.orders", "c.wal.orders")
    assert origin_region("orders", "c.wal.orders", "b") == "c"
    with pytest.raises(ValueError, match="not a log"):
        origin_region("orders", "wal.orders.dlq", "b")


class _Region(WalWriter):
    """A WalWriter on an in-memory producer whose Kafka answers or not."""

    def __init__(self, ns: Any, answers: bool = True) -> None:
        self.producer = MemoryProducer()
        super().__init__("unused:9092", {ns.name: ns}, producer=self.producer)
        self.answers = answers

    def reaches_kafka(self, timeout: float = 2.0) -> bool:
        return self.answers


def _failover(failover: bool, east_answers: bool) -> tuple[FailoverWriter, _Region, _Region, Any]:
    ns = parse_namespace(_doc(replication={"regions": ["east", "west"], "failover": failover}))
    east, west = _Region(ns, east_answers), _Region(ns, True)
    return FailoverWriter([("east", east), ("west", west)], {ns.name: ns}, answer_timeout_s=0.1), east, west, ns


def _upsert(ns: Any) -> WalEntry:
    return new_entry(ns.name, "k", Op.UPSERT, b'{"a": 1}', sequence=5)


def test_a_writer_whose_region_does_not_answer_writes_to_the_next_region() -> None:
    writer, east, west, ns = _failover(True, east_answers=False)
    answer = asyncio.run(writer.write_entry(_upsert(ns)))
    assert answer.ok and answer.region == "west"
    assert east.producer.sent == [] and len(west.producer.to("wal.orders")) == 1


def test_without_failover_a_silent_region_is_a_refusal_not_a_detour() -> None:
    writer, _east, west, ns = _failover(False, east_answers=False)
    answer = asyncio.run(writer.write_entry(_upsert(ns)))
    assert answer.delivery.durable is Durable.FALSE and answer.region == ""
    assert "east" in answer.delivery.message and west.producer.sent == []


def test_an_unknown_answer_is_never_retried_in_another_region() -> None:
    writer, east, west, ns = _failover(True, east_answers=True)
    east.producer.fail("wal.orders", Durable.UNKNOWN)
    answer = asyncio.run(writer.write_entry(_upsert(ns)))
    assert answer.delivery.durable is Durable.UNKNOWN and answer.region == "east"
    assert west.producer.sent == []


def test_the_stack_covers_the_second_region_when_asked_or_when_it_runs(tmp_path: Any) -> None:
    from connectors.local.services import MirrorMaker
    from connectors.local.stack import REGION_SERVICE_NAMES, SERVICE_NAMES, LocalStack
    from streams.config import LocalStackSettings

    one = LocalStackSettings(cache_dir=tmp_path / "cache", stack_dir=tmp_path / "stack")
    assert LocalStack(one).names == list(SERVICE_NAMES)
    two = one.model_copy(update={"regions": 2})
    assert LocalStack(two).names == [*SERVICE_NAMES, *REGION_SERVICE_NAMES]
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "state.json").write_text(json.dumps({"mirrormaker": {"pid": 1, "mark": "x"}}))
    assert LocalStack(one).names == [*SERVICE_NAMES, *REGION_SERVICE_NAMES]  # status and down see it
    props = MirrorMaker(two, None).properties()  # type: ignore[arg-type]
    assert props["east->west.enabled"] == props["west->east.enabled"] == "true"
    assert props["east.consumer.isolation.level"] == "read_committed"
    import re

    pattern = re.compile(props["topics"])
    assert pattern.fullmatch("wal.orders") and pattern.fullmatch("wal.a-b_c")
    for other in ("wal.orders.dlq", "wal.orders.cdc", "wal.orders.retry.10s", "east.wal.orders", "heartbeats"):
        assert not pattern.fullmatch(other), other


def test_a_retried_replicated_entry_goes_back_to_the_log_it_came_from() -> None:
    from streams.codec import Codec
    from streams.core.flood import FloodGuard
    from streams.core.routing import Router
    from streams.core.schedule import RetrySchedule
    from streams.metrics import Metrics
    from streams.model import Origin, RetryEnvelope

    sent = []
    for topic in ("east.wal.orders", "wal.orders", "wal.orders.retry.1s"):
        producer = MemoryProducer()
        schedule = RetrySchedule((1_000,), 2.0, 4)
        router = Router("orders", ("db",), schedule, producer, Codec(), Metrics(), FloodGuard("orders", 10))
        entry = new_entry("orders", "k", Op.UPSERT, b"{}", sequence=7)
        envelope = RetryEnvelope(entry, 1, 0, ("db",), "e", "e", Origin(topic, 2, 5), "1s")

        async def send(envelope: RetryEnvelope = envelope, router: Router = router) -> None:
            await router.hand_back(envelope)

        asyncio.run(send())
        sent += [(s.topic, s.partition) for s in producer.sent]
    # Never into this region's own log, from where MirrorMaker 2 would copy it back to its origin region.
    assert sent == [("east.wal.orders", 2), ("wal.orders", 2), ("wal.orders", 2)]


def test_a_secured_stack_refuses_the_second_region_before_starting_anything(tmp_path: Any) -> None:
    from connectors.local.errors import StackError
    from connectors.local.stack import LocalStack
    from streams.config import LocalStackSettings

    settings = LocalStackSettings(cache_dir=tmp_path / "cache", stack_dir=tmp_path / "stack", regions=2, secure=True)
    with pytest.raises(StackError, match="open stack only"):
        LocalStack(settings).up()
    assert not (tmp_path / "stack" / "state.json").exists()


REPAIR_COMMANDS = [
    ["verify"],
    ["backfill", "--from", "db", "--to", "search"],
    ["replay", "--from", "1h"],
    ["reindex", "--rollback"],
]


@pytest.mark.parametrize("command", REPAIR_COMMANDS)
def test_the_repair_commands_refuse_a_replicated_namespace(tmp_path: Any, command: list[str]) -> None:
    (tmp_path / "orders.yaml").write_text(yaml.safe_dump(_doc(replication={"regions": ["east", "west"]})))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WALSTREAM_NAMESPACE_DIR": str(tmp_path)}
    env["WALSTREAM_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "streams.tools.cli", command[0], "orders", *command[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "namespace 'orders' is replicated (east, west)" in result.stderr
