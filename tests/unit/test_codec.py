"""The wire format: both framings round-trip, old writers decode, and every bad input is a DecodeError with a reason."""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
from collections.abc import Callable
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import loader
from schemas.loader import load_history, load_schema
from streams.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, Codec, DecodeError, schema_fingerprint
from streams.model import (
    BatchInfo,
    ChangeEvent,
    DeadLetter,
    ErrorClass,
    Lifecycle,
    Op,
    Origin,
    RetryEnvelope,
    WalEntry,
    new_entry,
)

ORIGIN = Origin("wal.orders", 2, 41)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def an_entry() -> WalEntry:
    return WalEntry(
        entry_id="5f0c1b9e2a7d4e37a1f0c3d2b4e5f607",
        namespace="orders",
        key="order-1",
        op=Op.UPSERT,
        sequence=1_700_000_000_000_000,
        payload=b'{"customer": "ann", "amount": 12.5}',
        lifecycle=Lifecycle(1_700_000_000_000_000, delay_ms=5_000, jitter_ms=250),
        targets=("primary",),
        idempotency_key="req-7",
        batch=BatchInfo("batch-1", 1, 3),
        headers={"traceparent": "00-abc-def-01"},
    )


def a_delete() -> WalEntry:
    return new_entry("orders", "order-2", Op.DELETE, b"", now_us=1_700_000_000_000_001)


def test_entry_round_trip(codec: Codec) -> None:
    for entry in (an_entry(), a_delete()):
        assert codec.decode_entry(codec.encode_entry(entry)) == entry


def test_change_event_round_trip(codec: Codec) -> None:
    for entry in (an_entry(), a_delete()):
        event = ChangeEvent.for_entry(entry, ORIGIN, ts_ms=1_700_000_000_123)
        assert codec.decode_change_event(codec.encode_change_event(event)) == event


def test_retry_envelope_round_trip(codec: Codec) -> None:
    envelope = RetryEnvelope(an_entry(), 2, 1_700_000_010_000, ("search",), "timeout", "503 busy", ORIGIN, "10s")
    assert codec.decode_retry_envelope(codec.encode_retry_envelope(envelope)) == envelope


def test_dead_letter_round_trip(codec: Codec) -> None:
    decoded = DeadLetter(b"\x01raw", an_entry(), "gave up", ErrorClass.EXHAUSTED, 8, ("search",), ORIGIN, 99)
    undecodable = DeadLetter(b"\xff\xfe", None, "unknown framing", ErrorClass.UNDECODABLE, 0, (), ORIGIN, 100)
    for letter in (decoded, undecodable):
        assert codec.decode_dead_letter(codec.encode_dead_letter(letter)) == letter


def test_single_object_header_is_magic_then_little_endian_fingerprint(codec: Codec) -> None:
    data = codec.encode_entry(an_entry())
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(load_schema("wal_entry")))
    assert data[:2] == SINGLE_OBJECT_MAGIC == b"\xc3\x01"
    assert data[2:10] == _rabin_fingerprint(canonical.encode()).to_bytes(8, "little")


def test_fingerprint_matches_the_avro_spec_test_vectors() -> None:
    # From the Avro spec's reference implementation: fingerprints of "int" and "null" as signed longs.
    assert int.from_bytes(schema_fingerprint("int"), "little", signed=True) == 8247732601305521295
    assert int.from_bytes(schema_fingerprint("null"), "little", signed=True) == 7195948357588979594


def _rabin_fingerprint(data: bytes) -> int:
    """An independent CRC-64-AVRO, straight from the spec's pseudo-code."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_body_is_plain_avro_binary(codec: Codec) -> None:
    entry = an_entry()
    data = codec.encode_entry(entry)
    record = fastavro.schemaless_reader(_stream(data[10:]), fastavro.parse_schema(load_schema("wal_entry")), None)
    assert record == entry.to_record()


def _stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def test_confluent_framing_encodes_and_decodes_via_lookup() -> None:
    registry = {17: load_schema("wal_entry")}
    calls: list[int] = []

    def lookup(schema_id: int) -> Any:
        calls.append(schema_id)
        return registry.get(schema_id)

    writer = Codec(schema_ids={"WalEntry": 17})
    data = writer.encode_entry(an_entry())
    assert data[:1] == CONFLUENT_MAGIC and data[1:5] == (17).to_bytes(4, "big")
    reader = Codec(schema_lookup=lookup)
    assert reader.decode_entry(data) == an_entry()
    assert reader.decode_entry(data) == an_entry()
    assert calls == [17], "a schema id is looked up once, then cached"


def test_confluent_framing_without_lookup_is_refused(codec: Codec) -> None:
    data = Codec(schema_ids={"WalEntry": 3}).encode_entry(an_entry())
    with pytest.raises(DecodeError) as caught:
        codec.decode_entry(data)
    assert caught.value.reason == "no-schema-lookup"
    assert "no schema registry" in str(caught.value)


@pytest.mark.parametrize("lookup", [lambda _id: None, lambda _id: {}[_id]])
def test_unknown_schema_id(lookup: Callable[[int], Any]) -> None:
    data = Codec(schema_ids={"WalEntry": 99}).encode_entry(an_entry())
    with pytest.raises(DecodeError) as caught:
        Codec(schema_lookup=lookup).decode_entry(data)
    assert caught.value.reason == "unknown-schema-id"
    assert "99" in str(caught.value)


def test_registry_schema_of_another_record_is_incompatible() -> None:
    data = Codec(schema_ids={"WalEntry": 5}).encode_entry(an_entry())
    codec = Codec(schema_lookup=lambda _id: load_schema("change_event"))
    with pytest.raises(DecodeError) as caught:
        codec.decode_entry(data)
    assert caught.value.reason == "incompatible-schema"


def test_registry_returning_garbage_is_an_invalid_writer_schema() -> None:
    data = Codec(schema_ids={"WalEntry": 5}).encode_entry(an_entry())
    codec = Codec(schema_lookup=lambda _id: {"type": "no-such-type"})
    with pytest.raises(DecodeError) as caught:
        codec.decode_entry(data)
    assert caught.value.reason == "invalid-writer-schema"


def test_unknown_schema_ids_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="WalEntri"):
        Codec(schema_ids={"WalEntri": 1})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x7b\x22json\x22: 1}", "unknown-framing"),
        (b"\xc3\x02" + bytes(8) + b"\x00", "unknown-framing"),
        (b"\xc3", "truncated"),
        (b"\xc3\x01\x94\x47", "truncated"),
        (b"\xc3\x01" + bytes(8) + b"\x02", "unknown-fingerprint"),
    ],
)
def test_bad_headers(codec: Codec, data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        codec.decode_entry(data)
    assert caught.value.reason == reason
    assert str(caught.value)


def test_decode_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(DecodeError("truncated", "ends early")))
    assert (error.reason, str(error)) == ("truncated", "ends early")


def test_truncated_body(codec: Codec) -> None:
    data = codec.encode_entry(an_entry())
    for cut in range(10, len(data)):
        with pytest.raises(DecodeError) as caught:
            codec.decode_entry(data[:cut])
        assert caught.value.reason in {"truncated", "invalid-body"}, cut
    with pytest.raises(DecodeError) as caught:
        codec.decode_entry(data[:-1])
    assert caught.value.reason == "truncated"


def test_trailing_bytes_are_an_invalid_body(codec: Codec) -> None:
    with pytest.raises(DecodeError) as caught:
        codec.decode_entry(codec.encode_entry(an_entry()) + b"\x00")
    assert caught.value.reason == "invalid-body"
    assert "1 unexpected bytes" in str(caught.value)


def test_another_record_type_is_named(codec: Codec) -> None:
    event = ChangeEvent.for_entry(an_entry(), ORIGIN, ts_ms=1)
    with pytest.raises(DecodeError) as caught:
        codec.decode_entry(codec.encode_change_event(event))
    assert caught.value.reason == "wrong-record-type"
    assert "ChangeEvent" in str(caught.value)


def test_a_body_breaking_an_invariant_is_an_invalid_record(codec: Codec) -> None:
    record = an_entry().to_record()
    record["key"] = ""
    schema = fastavro.parse_schema(load_schema("wal_entry"))
    out = _stream(b"")
    fastavro.schemaless_writer(out, schema, record)
    data = SINGLE_OBJECT_MAGIC + schema_fingerprint(schema) + out.getvalue()
    with pytest.raises(DecodeError) as caught:
        codec.decode_entry(data)
    assert caught.value.reason == "invalid-record"
    assert "key" in str(caught.value)


@pytest.fixture(scope="module")
def registry_codec() -> Codec:
    """Knows odd schema ids (all registered as WalEntry) and no even ones."""
    return Codec(schema_lookup=lambda schema_id: load_schema("wal_entry") if schema_id % 2 else None)


@settings(max_examples=500)
@given(data=st.binary(max_size=200))
def test_random_bytes_only_ever_raise_decode_error(registry_codec: Codec, data: bytes) -> None:
    decoders: tuple[Callable[[bytes], object], ...] = (
        registry_codec.decode_entry,
        registry_codec.decode_change_event,
        registry_codec.decode_retry_envelope,
        registry_codec.decode_dead_letter,
    )
    for decode in decoders:
        with contextlib.suppress(DecodeError):
            decode(data)


@settings(max_examples=1000)
@given(body=st.binary(max_size=200), framing=st.sampled_from(["single-object", "confluent"]))
def test_random_bodies_behind_a_valid_header_only_ever_raise_decode_error(
    registry_codec: Codec, body: bytes, framing: str
) -> None:
    header = registry_codec.encode_entry(a_delete())[:10] if framing == "single-object" else b"\x00\x00\x00\x00\x01"
    try:
        registry_codec.decode_entry(header + body)
    except DecodeError as exc:
        assert exc.reason in {"truncated", "invalid-body", "invalid-record"}


def _old_wal_entry_schema() -> dict[str, Any]:
    """WalEntry as an older producer had it: without headers and batch (both have defaults today)."""
    old = copy.deepcopy(load_schema("wal_entry"))
    old["fields"] = [field for field in old["fields"] if field["name"] not in {"headers", "batch"}]
    return old


def test_data_from_an_older_writer_decodes_into_the_current_model(monkeypatch: pytest.MonkeyPatch) -> None:
    old = _old_wal_entry_schema()
    real_history = loader.load_history

    def history_with_old(name: str) -> dict[int, dict[str, Any]]:
        versions = real_history(name)
        return {0: old, **versions} if name == "wal_entry" else versions

    monkeypatch.setattr("streams.codec.load_history", history_with_old)
    codec = Codec()
    parsed_old = fastavro.parse_schema(old)
    entry = a_delete()
    record = {k: v for k, v in entry.to_record().items() if k not in {"headers", "batch"}}
    out = _stream(b"")
    fastavro.schemaless_writer(out, parsed_old, record)
    data = SINGLE_OBJECT_MAGIC + schema_fingerprint(parsed_old) + out.getvalue()

    decoded = codec.decode_entry(data)
    assert decoded == entry
    assert decoded.batch is None and dict(decoded.headers) == {}
    monkeypatch.undo()
    with pytest.raises(DecodeError) as caught:
        Codec().decode_entry(data)
    assert caught.value.reason == "unknown-fingerprint", "only the codec that knows the old version decodes it"


def test_every_shipped_history_version_is_a_known_writer(codec: Codec) -> None:
    entry = an_entry()
    versions = load_history("wal_entry")
    assert versions, "schemas/history must hold at least v1"
    for version, schema in versions.items():
        parsed = fastavro.parse_schema(schema)
        out = _stream(b"")
        fastavro.schemaless_writer(out, parsed, entry.to_record())
        data = SINGLE_OBJECT_MAGIC + schema_fingerprint(parsed) + out.getvalue()
        assert codec.decode_entry(data) == entry, f"wal_entry v{version}"


def test_lifecycle_defaults_survive_round_trip(codec: Codec) -> None:
    entry = new_entry("orders", "k", Op.UPSERT, b"{}", now_us=7)
    decoded = codec.decode_entry(codec.encode_entry(entry))
    assert decoded.lifecycle == Lifecycle(7, 0, 0)
    assert decoded.sequence == 7


# -- the hand-written WalEntry encoder ---------------------------------------------------------------------------------

_LONGS = st.integers(min_value=0, max_value=2**63 - 1)
_TEXT = st.text(min_size=1, max_size=12)  # any unicode but lone surrogates (not UTF-8 encodable)


@st.composite
def wal_entries(draw: st.DrawFn) -> WalEntry:
    op = draw(st.sampled_from(list(Op)))
    count = draw(st.integers(min_value=1, max_value=2**31 - 1))
    batch = draw(st.none() | st.builds(BatchInfo, _TEXT, st.integers(min_value=0, max_value=count - 1), st.just(count)))
    return WalEntry(
        entry_id=draw(_TEXT),
        namespace=draw(_TEXT),
        key=draw(_TEXT),
        op=op,
        sequence=draw(_LONGS),
        payload=b"" if op is Op.DELETE else draw(st.binary(max_size=300)),
        lifecycle=Lifecycle(draw(_LONGS), draw(_LONGS), draw(_LONGS)),
        targets=tuple(draw(st.lists(_TEXT, max_size=4, unique=True))),
        idempotency_key=draw(st.none() | _TEXT),
        batch=batch,
        headers=draw(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4)),
    )


def reference_entry_bytes(entry: WalEntry) -> bytes:
    """What fastavro's generic writer makes of the entry under the current schema."""
    schema = fastavro.parse_schema(load_schema("wal_entry"), named_schemas={})
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, entry.to_record(), disable_tuple_notation=True)
    return SINGLE_OBJECT_MAGIC + schema_fingerprint(schema) + out.getvalue()


def test_the_current_wal_entry_schema_is_the_hand_encoded_one(codec: Codec) -> None:
    # If this fails, the WalEntry schema changed: update ``_wal_entry_body`` and its fingerprint together.
    assert codec._entry_by_hand


_CODEC = Codec()


@settings(max_examples=1500, deadline=None)
@given(wal_entries())
def test_hand_encoded_wal_entry_is_byte_equal_to_fastavro(entry: WalEntry) -> None:
    encoded = _CODEC.encode_entry(entry)
    assert encoded == reference_entry_bytes(entry)
    assert _CODEC.decode_entry(encoded) == entry


def test_hand_encoded_wal_entry_edges(codec: Codec) -> None:
    base = an_entry()
    for sequence, written in ((0, 0), (63, 64), (2**63 - 1, 2**62), (1_700_000_000_000_000, 1_700_000_000_000_001)):
        entry = WalEntry(
            entry_id=base.entry_id,
            namespace="ordres-ünïcode-名前",
            key="clé 🔑",
            op=Op.UPSERT,
            sequence=sequence,
            payload=bytes(range(256)) * 3,
            lifecycle=Lifecycle(written, 2**40, 1),
            targets=tuple(f"t{i}" for i in range(70)),  # a block count over one varint byte
            headers={f"h{i}": "v" * i for i in range(70)},
            batch=BatchInfo("b", 2**31 - 2, 2**31 - 1),
        )
        assert codec.encode_entry(entry) == reference_entry_bytes(entry)
    for entry in (an_entry(), a_delete(), new_entry("orders", "k", Op.UPSERT, b"{}")):
        assert codec.encode_entry(entry) == reference_entry_bytes(entry)


def test_confluent_framed_entry_uses_the_same_body() -> None:
    framed = Codec(schema_ids={"WalEntry": 7}).encode_entry(an_entry())
    assert framed[:5] == CONFLUENT_MAGIC + (7).to_bytes(4, "big")
    assert framed[5:] == reference_entry_bytes(an_entry())[10:]


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.sampled_from([0, 63, 64, 2**55 - 1, 2**55, 2**63 - 1]))
def test_hand_encoded_long_is_avros(n: int) -> None:
    from streams.codec import _long

    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", n)
    assert _long(n) == out.getvalue()
