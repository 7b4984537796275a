"""The wire records are immutable values that refuse broken invariants and map to and from fastavro dicts."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from streams.model import (
    BatchInfo,
    ChangeEvent,
    ChangeOp,
    DeadLetter,
    ErrorClass,
    Lifecycle,
    Op,
    Origin,
    RetryEnvelope,
    Source,
    WalEntry,
    new_entry,
)

ORIGIN = Origin("wal.orders", 0, 12)


def entry(**changes: Any) -> WalEntry:
    fields: dict[str, Any] = {
        "entry_id": "e1",
        "namespace": "orders",
        "key": "k1",
        "op": Op.UPSERT,
        "sequence": 1_000,
        "payload": b"{}",
        "lifecycle": Lifecycle(1_000),
    }
    fields.update(changes)
    return WalEntry(**fields)


def test_new_entry_fills_id_and_uses_write_time_as_sequence() -> None:
    made = new_entry("orders", "k1", Op.UPSERT, b"{}", now_us=1_700_000_000_000_000, delay_ms=30_000, jitter_ms=5)
    assert len(made.entry_id) == 32 and int(made.entry_id, 16) >= 0
    assert made.sequence == 1_700_000_000_000_000
    assert made.lifecycle == Lifecycle(1_700_000_000_000_000, 30_000, 5)
    assert made.targets == () and made.idempotency_key is None and made.batch is None and dict(made.headers) == {}
    assert new_entry("orders", "k1", Op.UPSERT, b"{}").entry_id != made.entry_id


def test_new_entry_defaults_to_now_in_microseconds() -> None:
    before = time.time_ns() // 1_000
    made = new_entry("orders", "k1", Op.DELETE, b"")
    after = time.time_ns() // 1_000
    assert before <= made.sequence <= after
    assert made.lifecycle.original_write_time == made.sequence


def test_an_explicit_sequence_wins_over_the_write_time() -> None:
    made = new_entry("orders", "k1", Op.UPSERT, b"{}", sequence=42, now_us=1_000)
    assert made.sequence == 42 and made.lifecycle.original_write_time == 1_000


def test_values_are_frozen_and_hashable() -> None:
    made = entry(headers={"traceparent": "x"}, targets=["primary"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.key = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        made.headers["traceparent"] = "y"  # type: ignore[index]
    assert made.targets == ("primary",), "any iterable of targets becomes a tuple"
    assert hash(made) == hash(entry(headers={"traceparent": "x"}, targets=["primary"]))
    assert not hasattr(made, "__dict__"), "slotted"


def test_headers_are_copied_so_the_caller_cannot_change_them_later() -> None:
    headers = {"a": "1"}
    made = entry(headers=headers)
    headers["a"] = "2"
    assert made.headers["a"] == "1"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"key": ""}, "key"),
        ({"namespace": ""}, "namespace"),
        ({"entry_id": ""}, "entry_id"),
        ({"op": Op.DELETE, "payload": b"x"}, "DELETE"),
        ({"op": "MERGE"}, "MERGE"),
        ({"sequence": -1}, "sequence"),
        ({"sequence": 2**63}, "sequence"),
        ({"payload": "text"}, "payload"),
        ({"targets": "primary"}, "targets"),
        ({"targets": ("a", "a")}, "targets"),
        ({"targets": ("",)}, "targets"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"headers": {"a": 1}}, "headers"),
    ],
)
def test_wal_entry_refuses_broken_invariants(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        entry(**changes)


def test_a_delete_has_an_empty_payload() -> None:
    assert entry(op=Op.DELETE, payload=b"").op is Op.DELETE
    assert entry(op="DELETE", payload=b"").op is Op.DELETE, "the string value is accepted and normalised"


@pytest.mark.parametrize(("index", "count"), [(-1, 2), (2, 2), (0, 0)])
def test_batch_position_must_be_inside_the_batch(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        BatchInfo("b", index, count)


def test_lifecycle_refuses_negative_delays() -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        Lifecycle(1, delay_ms=-1)


def test_wal_entry_record_round_trip() -> None:
    made = entry(
        targets=("primary", "search"),
        idempotency_key="idem",
        batch=BatchInfo("b", 0, 2),
        headers={"traceparent": "t"},
    )
    record = made.to_record()
    assert record["op"] == "UPSERT" and record["targets"] == ["primary", "search"]
    assert record["batch"] == {"id": "b", "index": 0, "count": 2}
    assert record["lifecycle"] == {"original_write_time": 1_000, "delay_ms": 0, "jitter_ms": 0}
    assert WalEntry.from_record(record) == made


def test_change_event_for_an_upsert_and_a_delete() -> None:
    upsert = ChangeEvent.for_entry(entry(payload=b'{"a":1}'), ORIGIN, ts_ms=5)
    assert upsert.op is ChangeOp.UPDATE and upsert.after == b'{"a":1}' and upsert.ts_ms == 5
    assert upsert.source == Source("orders", "wal.orders", 0, 12, 1_000, "e1")
    delete = ChangeEvent.for_entry(entry(op=Op.DELETE, payload=b""), ORIGIN, ts_ms=6)
    assert delete.op is ChangeOp.DELETE and delete.after is None
    assert delete.to_record()["op"] == "d"
    assert ChangeEvent.from_record(delete.to_record()) == delete


def test_change_event_after_matches_its_op() -> None:
    source = Source("orders", "wal.orders", 0, 1, 1, "e")
    with pytest.raises(ValueError, match="None for a delete"):
        ChangeEvent(ChangeOp.DELETE, "k", b"x", source, 1)
    with pytest.raises(ValueError, match="bytes"):
        ChangeEvent(ChangeOp.CREATE, "k", None, source, 1)


def test_retry_envelope_round_trip_and_invariants() -> None:
    envelope = RetryEnvelope(entry(), 1, 10, ["search"], "first", "last", ORIGIN, "1s")  # type: ignore[arg-type]
    assert envelope.pending_targets == ("search",)
    assert RetryEnvelope.from_record(envelope.to_record()) == envelope
    with pytest.raises(ValueError, match="at least one target"):
        RetryEnvelope(entry(), 1, 10, (), "e", "e", ORIGIN, "1s")
    assert RetryEnvelope(entry(), 0, 10, ("search",), "", "", ORIGIN, "1s").attempt == 0  # delayed, not tried yet
    with pytest.raises(ValueError, match="attempt"):
        RetryEnvelope(entry(), -1, 10, ("search",), "e", "e", ORIGIN, "1s")


def test_dead_letter_round_trip_with_and_without_entry() -> None:
    for decoded in (entry(), None):
        letter = DeadLetter(b"\x00raw", decoded, "why", ErrorClass.FATAL, 1, ("primary",), ORIGIN, 77)
        record = letter.to_record()
        assert record["error_class"] == "fatal"
        assert DeadLetter.from_record(record) == letter


def test_dead_letter_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        DeadLetter(b"", None, "", ErrorClass.FATAL, 0, (), ORIGIN, 1)


def test_origin_refuses_negative_positions() -> None:
    with pytest.raises(ValueError, match="offset"):
        Origin("t", 0, -1)
    with pytest.raises(ValueError, match="partition"):
        Origin("t", -1, 0)


def test_entry_ids_are_distinct_uuid4_hex() -> None:
    import uuid

    from streams.model import new_entry_id

    ids = [new_entry_id() for _ in range(3000)]  # several draws of the pool
    assert len(set(ids)) == len(ids)
    for entry_id in ids:
        parsed = uuid.UUID(hex=entry_id)
        assert parsed.hex == entry_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
