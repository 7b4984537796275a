"""Request validation of the API: each refusal names its field and code; entries are built deterministically."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from streams.api.messages import BatchEntrySpec, BatchRequest, BulkDeleteRequest, LifecycleSpec, WriteRequest
from streams.api.rejections import RejectCode, Rejected
from streams.api.validation import (
    Limits,
    RequestValidator,
    ValidBulkDelete,
    build_entry,
    bulk_delete_entries,
    derive_id,
)
from streams.model import BatchInfo, Op
from streams.namespaces import Namespace, parse_namespace

NOW = 1_700_000_000_000_000


def _namespace(name: str = "orders", **payload: object) -> Namespace:
    return parse_namespace(
        {
            "name": name,
            "payload": {"format": "json", "max_bytes": 64, **payload},
            "targets": {
                "primary": {"type": "elasticsearch", "index": "a", "fields": {"sku": "keyword"}},
                "search": {"type": "elasticsearch", "index": "b", "fields": {"sku": "keyword"}},
            },
        }
    )


AVRO = _namespace(
    "items",
    format="avro",
    schema={"type": "record", "name": "I", "fields": [{"name": "sku", "type": "string"}]},
)
NS = _namespace()
VALIDATOR = RequestValidator({NS.name: NS, AVRO.name: AVRO})
GOOD = WriteRequest(namespace="orders", key="k1", op=1, payload=b'{"sku":"a"}')


def _refusal(call: object) -> tuple[RejectCode, str]:
    with pytest.raises(Rejected) as refused:
        call()  # type: ignore[operator]
    return refused.value.rejection.code, refused.value.rejection.field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"key": ""}, "key"),
        ({"key": "x" * 513}, "key"),
        ({"op": 0}, "op"),
        ({"op": 3}, "op"),
        ({"op": -1}, "op"),
        ({"payload": b""}, "payload"),
        ({"payload": b"not json"}, "payload"),
        ({"payload": b'"a string"'}, "payload"),
        ({"payload": json.dumps({"sku": "x" * 80}).encode()}, "payload"),
        ({"op": 2}, "payload"),  # a DELETE carries no payload
        ({"targets": ("nope",)}, "targets"),
        ({"targets": ("search", "")}, "targets"),
        ({"sequence": 2**63}, "sequence"),
        ({"idempotency_key": "i" * 257}, "idempotency_key"),
        ({"lifecycle": LifecycleSpec(delay_ms=-1)}, "lifecycle.delay_ms"),
        ({"lifecycle": LifecycleSpec(jitter_ms=-1)}, "lifecycle.jitter_ms"),
        ({"lifecycle": LifecycleSpec(delay_ms=Limits().max_delay_ms + 1)}, "lifecycle.delay_ms"),
        ({"lifecycle": LifecycleSpec(original_write_time_us=NOW * 1000)}, "lifecycle.original_write_time_us"),
    ],
)
def test_write_refusals_name_the_field(change: dict[str, object], field: str) -> None:
    request = replace(GOOD, **change)  # type: ignore[arg-type]
    assert _refusal(lambda: VALIDATOR.write(NS, request, NOW)) == (RejectCode.INVALID_ARGUMENT, field)


def test_over_size_payload_is_invalid_argument_not_resource_exhausted() -> None:
    request = replace(GOOD, payload=json.dumps({"sku": "x" * 80}).encode())
    with pytest.raises(Rejected) as refused:
        VALIDATOR.write(NS, request, NOW)
    assert refused.value.rejection.code is RejectCode.INVALID_ARGUMENT
    assert "over the namespace's limit of 64" in refused.value.rejection.message


def test_avro_payload_must_match_the_schema() -> None:
    from streams.payload import PayloadCodec

    good = replace(GOOD, namespace="items", payload=PayloadCodec(AVRO.payload).encode({"sku": "s"}))
    assert VALIDATOR.write(AVRO, good, NOW).payload == good.payload
    bad = replace(good, payload=good.payload + b"\x00")
    assert _refusal(lambda: VALIDATOR.write(AVRO, bad, NOW)) == (RejectCode.INVALID_ARGUMENT, "payload")


def test_namespace_lookup() -> None:
    assert VALIDATOR.namespace("orders") is NS
    assert _refusal(lambda: VALIDATOR.namespace("")) == (RejectCode.INVALID_ARGUMENT, "namespace")
    assert _refusal(lambda: VALIDATOR.namespace("nope")) == (RejectCode.NOT_FOUND, "namespace")


def test_valid_write_resolves_targets_in_declaration_order() -> None:
    valid = VALIDATOR.write(NS, replace(GOOD, targets=("search", "primary", "search")), NOW)
    assert valid.targets == ("primary", "search")
    assert valid.op is Op.UPSERT and valid.write_time_us == 0  # 0: the server picks the time


def test_delete_has_an_empty_payload() -> None:
    valid = VALIDATOR.write(NS, replace(GOOD, op=2, payload=b""), NOW)
    assert valid.op is Op.DELETE and valid.payload == b""


def test_build_entry_sequence_precedence() -> None:
    valid = VALIDATOR.write(NS, GOOD, NOW)
    assert build_entry("orders", valid, entry_id="e", write_time_us=NOW).sequence == NOW
    assert build_entry("orders", valid, entry_id="e", write_time_us=NOW, sequence=NOW + 3).sequence == NOW + 3
    explicit = VALIDATOR.write(NS, replace(GOOD, sequence=7), NOW)
    entry = build_entry("orders", explicit, entry_id="e", write_time_us=NOW, sequence=NOW + 3, idempotency_key="ik")
    assert entry.sequence == 7
    assert entry.lifecycle.original_write_time == NOW
    assert entry.idempotency_key == "ik"


def test_build_entry_carries_batch_and_headers() -> None:
    valid = VALIDATOR.write(NS, GOOD, NOW)
    entry = build_entry(
        "orders", valid, entry_id="e", write_time_us=NOW, batch=BatchInfo("b", 0, 2), headers={"traceparent": "t"}
    )
    assert entry.batch == BatchInfo("b", 0, 2)
    assert dict(entry.headers) == {"traceparent": "t"}


def test_derive_id_is_stable_and_separates_parts() -> None:
    assert derive_id("a", "b") == derive_id("a", "b")
    assert derive_id("a", "b") != derive_id("ab")
    assert len(derive_id("x")) == 32


# -- batches -----------------------------------------------------------------------------------------------------------


def _entry(key: str = "k", **fields: object) -> BatchEntrySpec:
    return replace(BatchEntrySpec(key, 1, b'{"sku":"s"}'), **fields)  # type: ignore[arg-type]


def test_batch_refusals_point_at_the_entry() -> None:
    cases = [
        (BatchRequest("orders", ()), "entries"),
        (BatchRequest("orders", (_entry(), _entry(key=""))), "entries[1].key"),
        (BatchRequest("orders", (_entry(op=5),)), "entries[0].op"),
        (BatchRequest("orders", (_entry(), _entry(), _entry(targets=("x",)))), "entries[2].targets"),
        (BatchRequest("orders", (_entry(lifecycle=LifecycleSpec(delay_ms=-2)),)), "entries[0].lifecycle.delay_ms"),
        (
            BatchRequest("orders", (_entry(lifecycle=LifecycleSpec(original_write_time_us=5)),)),
            "entries[0].lifecycle.original_write_time_us",
        ),
        (BatchRequest("orders", (_entry(),), original_write_time_us=NOW * 10), "original_write_time_us"),
    ]
    for request, field in cases:
        assert _refusal(lambda r=request: VALIDATOR.batch(NS, r, NOW)) == (RejectCode.INVALID_ARGUMENT, field)


def test_batch_size_is_bounded() -> None:
    small = RequestValidator({"orders": NS}, Limits(max_batch_entries=2))
    request = BatchRequest("orders", (_entry("a"), _entry("b"), _entry("c")))
    assert _refusal(lambda: small.batch(NS, request, NOW)) == (RejectCode.INVALID_ARGUMENT, "entries")


def test_valid_batch_keeps_request_order() -> None:
    write_time, entries = VALIDATOR.batch(NS, BatchRequest("orders", (_entry("b"), _entry("a"))), NOW)
    assert write_time == 0
    assert [e.key for e in entries] == ["b", "a"]


# -- bulk deletes ------------------------------------------------------------------------------------------------------


def test_bulk_delete_refusals() -> None:
    cases = [
        (BulkDeleteRequest("orders", ()), "keys"),
        (BulkDeleteRequest("orders", ("a", "")), "keys[1]"),
        (BulkDeleteRequest("orders", ("a", "b", "a")), "keys[2]"),
        (BulkDeleteRequest("orders", ("a",), delay_ms=-1), "delay_ms"),
        (BulkDeleteRequest("orders", ("a",), spread_ms=-1), "spread_ms"),
        (BulkDeleteRequest("orders", ("a",), jitter_ms=-1), "jitter_ms"),
        (BulkDeleteRequest("orders", ("a",), delay_ms=Limits().max_delay_ms, spread_ms=1), "spread_ms"),
        (BulkDeleteRequest("orders", ("a",), targets=("zzz",)), "targets"),
    ]
    for request, field in cases:
        assert _refusal(lambda r=request: VALIDATOR.bulk_delete(NS, r, NOW)) == (RejectCode.INVALID_ARGUMENT, field)
    many = RequestValidator({"orders": NS}, Limits(max_bulk_keys=2))
    assert _refusal(lambda: many.bulk_delete(NS, BulkDeleteRequest("orders", ("a", "b", "c")), NOW)) == (
        RejectCode.INVALID_ARGUMENT,
        "keys",
    )


def test_bulk_delete_entries_are_spread_and_reproducible() -> None:
    valid = ValidBulkDelete(tuple(f"k{i}" for i in range(200)), ("primary",), 500, 10_000, 40, 0)
    first = bulk_delete_entries("orders", valid, scope="s1", write_time_us=NOW, idempotency_key="ik")
    again = bulk_delete_entries("orders", valid, scope="s1", write_time_us=NOW, idempotency_key="ik")
    other = bulk_delete_entries("orders", valid, scope="s2", write_time_us=NOW, idempotency_key="ik")
    assert first == again
    assert [e.entry_id for e in first] != [e.entry_id for e in other]
    delays = [e.lifecycle.delay_ms for e in first]
    assert all(500 <= d <= 10_500 for d in delays)
    # Roughly uniform: each quarter of the spread holds a fair share of the deletes.
    quarters = [sum(1 for d in delays if 500 + q * 2500 <= d < 500 + (q + 1) * 2500) for q in range(4)]
    assert min(quarters) > 25, quarters
    assert all(e.op is Op.DELETE and e.payload == b"" and e.sequence == NOW for e in first)
    assert {e.lifecycle.jitter_ms for e in first} == {40}
    assert len({e.entry_id for e in first}) == 200


def test_bulk_delete_without_spread_uses_the_delay() -> None:
    valid = ValidBulkDelete(("a", "b"), (), 300, 0, 0, 0)
    entries = bulk_delete_entries("orders", valid, scope="s", write_time_us=NOW, idempotency_key=None)
    assert [e.lifecycle.delay_ms for e in entries] == [300, 300]
