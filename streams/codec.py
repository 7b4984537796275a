"""The wire format: Avro single-object or Confluent-framed bytes of the record types, decoded with schema resolution."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Generic, Literal, TypeVar

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form
from fastavro.types import Schema

from schemas.loader import load_history, load_schema
from streams import topics
from streams.model import (
    ENTRY_ID_HEADER,
    ChangeEvent,
    ChangeOp,
    DeadLetter,
    Op,
    Origin,
    RetryEnvelope,
    WalEntry,
    change_record,
)
from streams.ports import Headers, Outgoing
from streams.tracing import kafka_trace_headers

#: The first two bytes of an Avro single-object encoded value.
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
#: The first byte of a Confluent-framed value; a 4-byte big-endian schema id follows.
CONFLUENT_MAGIC = b"\x00"

_SINGLE_OBJECT_HEADER_LEN = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER_LEN = len(CONFLUENT_MAGIC) + 4
# Schema ids are immutable in a registry, so their parsed schemas may be cached; the cap bounds memory anyway.
_MAX_CACHED_SCHEMA_IDS = 1024
# Log topic names are cached per namespace name (checking a name costs a regex match per record); bounded too.
_MAX_CACHED_TOPICS = 1024

DecodeReason = Literal[
    "empty",  # zero bytes
    "unknown-framing",  # neither C3 01 (single object) nor 00 (Confluent)
    "truncated",  # the header or the body ends early
    "unknown-fingerprint",  # single-object fingerprint of no schema we know
    "wrong-record-type",  # a known fingerprint, but of another record type
    "no-schema-lookup",  # Confluent framing, but no schema registry is configured
    "unknown-schema-id",  # the registry does not know the schema id
    "invalid-writer-schema",  # the registry returned something that is not an Avro schema
    "incompatible-schema",  # the writer schema cannot be resolved into the current reader schema
    "invalid-body",  # the Avro body is malformed or followed by extra bytes
    "invalid-record",  # the body decoded but breaks a record invariant (for example an empty key)
    "unknown-namespace",  # raised by readers, not the codec: the entry names another namespace than its topic's
]

#: Returns the writer schema registered under a Confluent schema id, or None (or raises LookupError) if unknown.
SchemaLookup = Callable[[int], Schema | None]

T = TypeVar("T")

#: The fingerprint of the WalEntry schema that ``_wal_entry_body`` encodes by hand; any other schema is encoded by
#: fastavro. tests/unit/test_codec.py holds the two to the same bytes.
_HAND_ENCODED_WAL_ENTRY = bytes.fromhex("94477d3370b18ac1")

# What a malformed Avro body can make fastavro raise, besides EOFError for a short read.
_BODY_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError)
# What a malformed writer schema can make fastavro's parser raise.
_SCHEMA_ERRORS = (SchemaParseException, ValueError, KeyError, TypeError, AttributeError)
# What a dict with the wrong shape or values can make a from_record raise.
_RECORD_ERRORS = (ValueError, KeyError, TypeError, AttributeError)


class DecodeError(ValueError):
    """Bytes that do not decode to the expected record; ``reason`` is a short machine-friendly code."""

    def __init__(self, reason: DecodeReason, message: str) -> None:
        super().__init__(message)
        self.reason: DecodeReason = reason

    def __reduce__(self) -> tuple[type[DecodeError], tuple[DecodeReason, str]]:
        return (type(self), (self.reason, str(self)))


def schema_fingerprint(schema: Schema) -> bytes:
    """The 8-byte CRC-64-AVRO (Rabin) fingerprint of the schema's parsing canonical form, in wire (little-endian) order.

    fastavro already renders the fingerprint's bytes little-endian, as the Avro spec's single-object encoding
    writes them (for ``"int"`` the bytes ``8f 5c 39 3f 1a d5 75 72``, the signed long 8247732601305521295).
    """
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def _parse(schema: Schema) -> Schema:
    # A fresh named-schemas dict per schema, so versions that reuse a record name do not collide.
    return parse_schema(schema, named_schemas={})


@dataclass(frozen=True, slots=True)
class _Format(Generic[T]):
    """Everything needed to encode and decode one record type, computed once."""

    record_name: str
    reader: Schema  # the current schema, parsed
    header: bytes  # what encode writes before the body
    writers: Mapping[bytes, Schema]  # fingerprint -> parsed writer schema (current and history)
    from_record: Callable[[Mapping[str, Any]], T]


# -- the WalEntry body by hand: the SDK encodes one per write, and fastavro's generic writer costs more than the rest
# of a write. Avro binary: a long (or int) is zig-zag varint, a string or bytes its length then its bytes, an enum
# or a union branch its index, an array or map one block (its count, the items, then 0), a record its fields.

_ONE_BYTE = [bytes((i,)) for i in range(128)]


# Continuation bits of a varint of k bytes (on every byte but the last), as a little-endian integer.
_CONTINUED = [0] + [int.from_bytes(b"\x80" * (k - 1) + b"\x00", "little") for k in range(1, 9)]


def _long(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _ONE_BYTE[n]
    if n < 1 << 56:
        # Up to 8 groups of 7 bits, spread one per byte at once (a sequence in microseconds takes 8).
        spread = (
            (n & 0x7F)
            | (n << 1 & 0x7F00)
            | (n << 2 & 0x7F0000)
            | (n << 3 & 0x7F000000)
            | (n << 4 & 0x7F00000000)
            | (n << 5 & 0x7F0000000000)
            | (n << 6 & 0x7F000000000000)
            | (n << 7 & 0x7F00000000000000)
        )
        size = (n.bit_length() + 6) // 7
        return (spread | _CONTINUED[size]).to_bytes(size, "little")
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _text(value: str) -> bytes:
    data = value.encode()
    return _long(len(data)) + data


def _wal_entry_body(entry: WalEntry) -> bytes:
    """The Avro body of ``entry`` under the schema fingerprinted ``_HAND_ENCODED_WAL_ENTRY``."""
    lifecycle = entry.lifecycle
    sequence = _long(entry.sequence)
    written = sequence if lifecycle.original_write_time == entry.sequence else _long(lifecycle.original_write_time)
    payload = entry.payload
    parts = [
        _text(entry.entry_id),
        _text(entry.namespace),
        _text(entry.key),
        b"\x02" if entry.op is Op.DELETE else b"\x00",
        sequence,
        _long(len(payload)),
        payload,
    ]
    targets = entry.targets
    if targets:
        parts.append(_long(len(targets)))
        parts.extend(_text(t) for t in targets)
    parts.append(b"\x00")
    parts.append(b"\x00" if entry.idempotency_key is None else b"\x02" + _text(entry.idempotency_key))
    parts += (written, _long(lifecycle.delay_ms), _long(lifecycle.jitter_ms))
    batch = entry.batch
    parts.append(b"\x00" if batch is None else b"\x02" + _text(batch.id) + _long(batch.index) + _long(batch.count))
    headers = entry.headers
    if headers:
        parts.append(_long(len(headers)))
        for name, value in headers.items():
            parts += (_text(name), _text(value))
    parts.append(b"\x00")
    return b"".join(parts)


class Codec:
    """Encodes the four record types and decodes any known version of them into the current model.

    Build one per process at the composition root: it loads and parses every schema once.
    """

    __slots__ = (
        "_by_fingerprint",
        "_change",
        "_dead",
        "_entry",
        "_entry_by_hand",
        "_lookup",
        "_retry",
        "_wal_topics",
        "_writers_by_id",
    )

    def __init__(
        self,
        *,
        schema_lookup: SchemaLookup | None = None,
        schema_ids: Mapping[str, int] | None = None,
    ) -> None:
        """``schema_lookup`` resolves Confluent schema ids when decoding; without it Confluent framing is refused.

        ``schema_ids`` maps a record name (``"WalEntry"``) to its registered id: that type is then *encoded* with
        Confluent framing instead of single-object encoding.
        """
        ids = dict(schema_ids or {})
        self._lookup = schema_lookup
        self._writers_by_id: dict[int, Schema] = {}
        self._by_fingerprint: dict[bytes, str] = {}
        self._entry = self._load("wal_entry", WalEntry.from_record, ids)
        self._change = self._load("change_event", ChangeEvent.from_record, ids)
        self._retry = self._load("retry_envelope", RetryEnvelope.from_record, ids)
        self._dead = self._load("dead_letter", DeadLetter.from_record, ids)
        if ids:
            raise ValueError(f"schema_ids names unknown record types: {', '.join(sorted(ids))}")
        self._entry_by_hand = schema_fingerprint(self._entry.reader) == _HAND_ENCODED_WAL_ENTRY
        self._wal_topics: dict[str, str] = {}  # namespace -> its log's (checked) name

    def _load(self, name: str, from_record: Callable[[Mapping[str, Any]], T], ids: dict[str, int]) -> _Format[T]:
        current = load_schema(name)
        record_name = str(current["name"])
        reader = _parse(current)
        current_fp = schema_fingerprint(reader)
        writers: dict[bytes, Schema] = {current_fp: reader}
        for schema in load_history(name).values():
            parsed = _parse(schema)
            writers.setdefault(schema_fingerprint(parsed), parsed)
        for fp in writers:
            self._by_fingerprint[fp] = record_name
        schema_id = ids.pop(record_name, None)
        if schema_id is None:
            header = SINGLE_OBJECT_MAGIC + current_fp
        elif isinstance(schema_id, int) and 0 <= schema_id < 2**31:
            header = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
        else:
            raise ValueError(f"schema id of {record_name} must be an integer in [0, 2**31), got {schema_id!r}")
        return _Format(record_name, reader, header, writers, from_record)

    # -- public API -------------------------------------------------------------------------------------------------

    def encode_entry(self, entry: WalEntry) -> bytes:
        if self._entry_by_hand:
            return self._entry.header + _wal_entry_body(entry)
        return self._encode(self._entry, entry.to_record())

    def decode_entry(self, data: bytes) -> WalEntry:
        return self._decode(self._entry, data)

    def log_record(self, entry: WalEntry, extra_headers: Headers = ()) -> Outgoing:
        """The entry as its namespace's log holds it: keyed by its key, its id and trace context in headers."""
        headers = [(ENTRY_ID_HEADER, entry.entry_id.encode())]
        if entry.headers:
            headers += kafka_trace_headers(entry.headers)
        if extra_headers:
            headers += extra_headers
        topic = self._wal_topics.get(entry.namespace)
        if topic is None:
            if len(self._wal_topics) >= _MAX_CACHED_TOPICS:
                self._wal_topics.clear()
            topic = self._wal_topics[entry.namespace] = topics.wal_topic(entry.namespace)
        return Outgoing(
            topic,
            entry.key.encode(),
            self.encode_entry(entry),
            headers,
            None,
            entry.entry_id,
        )

    def encode_change_event(self, event: ChangeEvent) -> bytes:
        return self._encode(self._change, event.to_record())

    def encode_change(self, entry: WalEntry, origin: Origin, ts_ms: int, op: ChangeOp) -> bytes:
        """The change event announcing ``entry`` with ``op``, encoded without building the ChangeEvent."""
        return self._encode(self._change, change_record(entry, origin, ts_ms, op))

    def decode_change_event(self, data: bytes) -> ChangeEvent:
        return self._decode(self._change, data)

    def encode_retry_envelope(self, envelope: RetryEnvelope) -> bytes:
        return self._encode(self._retry, envelope.to_record())

    def decode_retry_envelope(self, data: bytes) -> RetryEnvelope:
        return self._decode(self._retry, data)

    def encode_dead_letter(self, letter: DeadLetter) -> bytes:
        return self._encode(self._dead, letter.to_record())

    def decode_dead_letter(self, data: bytes) -> DeadLetter:
        return self._decode(self._dead, data)

    # -- internals --------------------------------------------------------------------------------------------------

    @staticmethod
    def _encode(fmt: _Format[Any], record: dict[str, Any]) -> bytes:
        out = BytesIO()
        out.write(fmt.header)
        schemaless_writer(out, fmt.reader, record, disable_tuple_notation=True)
        return out.getvalue()

    def _decode(self, fmt: _Format[T], data: bytes) -> T:
        record = self._read(fmt, data)
        try:
            return fmt.from_record(record)
        except _RECORD_ERRORS as exc:
            raise DecodeError("invalid-record", f"{fmt.record_name} decoded but is invalid: {exc}") from exc

    def _read(self, fmt: _Format[Any], data: bytes) -> Mapping[str, Any]:
        size = len(data)
        if size == 0:
            raise DecodeError("empty", f"expected a {fmt.record_name} but the value is empty")
        if data[0] == SINGLE_OBJECT_MAGIC[0]:
            writer = self._single_object_writer(fmt, data)
            offset = _SINGLE_OBJECT_HEADER_LEN
        elif data[0] == CONFLUENT_MAGIC[0]:
            writer = self._confluent_writer(fmt, data)
            offset = _CONFLUENT_HEADER_LEN
        else:
            raise DecodeError(
                "unknown-framing",
                f"expected a {fmt.record_name} framed as Avro single-object (C3 01) or Confluent (00), "
                f"but the value starts with {bytes(data[:2]).hex(' ')}",
            )
        stream = BytesIO(data)
        stream.seek(offset)
        # Reading with the writer schema alone skips resolution when the writer is the current schema.
        reader = None if writer is fmt.reader else fmt.reader
        try:
            record = schemaless_reader(stream, writer, reader)
        except EOFError as exc:
            raise DecodeError("truncated", f"the {fmt.record_name} body ends early ({size} bytes in all)") from exc
        except SchemaResolutionError as exc:
            raise DecodeError(
                "incompatible-schema", f"the writer schema cannot be read as the current {fmt.record_name}: {exc}"
            ) from exc
        except _BODY_ERRORS as exc:
            raise DecodeError("invalid-body", f"the {fmt.record_name} body is malformed: {exc!r}") from exc
        if stream.tell() != size:
            raise DecodeError(
                "invalid-body", f"the {fmt.record_name} body is followed by {size - stream.tell()} unexpected bytes"
            )
        if not isinstance(record, dict):
            raise DecodeError("invalid-body", f"the body decoded to a {type(record).__name__}, not a record")
        return record

    def _single_object_writer(self, fmt: _Format[Any], data: bytes) -> Schema:
        if len(data) >= 2 and data[1] != SINGLE_OBJECT_MAGIC[1]:
            raise DecodeError(
                "unknown-framing",
                f"expected a {fmt.record_name}; C3 must be followed by 01 for Avro single-object encoding, "
                f"got {data[1]:02x}",
            )
        if len(data) < _SINGLE_OBJECT_HEADER_LEN:
            raise DecodeError(
                "truncated", f"an Avro single-object header needs {_SINGLE_OBJECT_HEADER_LEN} bytes, got {len(data)}"
            )
        fp = bytes(data[2:_SINGLE_OBJECT_HEADER_LEN])
        writer = fmt.writers.get(fp)
        if writer is not None:
            return writer
        other = self._by_fingerprint.get(fp)
        if other is not None:
            raise DecodeError("wrong-record-type", f"expected a {fmt.record_name} but the value is a {other}")
        raise DecodeError(
            "unknown-fingerprint",
            f"no known {fmt.record_name} schema has the fingerprint {fp.hex()} (written by a newer version?)",
        )

    def _confluent_writer(self, fmt: _Format[Any], data: bytes) -> Schema:
        if self._lookup is None:
            raise DecodeError(
                "no-schema-lookup",
                f"the {fmt.record_name} value uses Confluent framing, but no schema registry is configured",
            )
        if len(data) < _CONFLUENT_HEADER_LEN:
            raise DecodeError("truncated", f"a Confluent header needs {_CONFLUENT_HEADER_LEN} bytes, got {len(data)}")
        schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
        cached = self._writers_by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            found = self._lookup(schema_id)
        except LookupError:
            found = None
        if found is None:
            raise DecodeError("unknown-schema-id", f"the schema registry does not know schema id {schema_id}")
        try:
            parsed = _parse(found)
            fp = schema_fingerprint(parsed)
        except _SCHEMA_ERRORS as exc:
            raise DecodeError(
                "invalid-writer-schema", f"schema id {schema_id} is not a valid Avro schema: {exc}"
            ) from exc
        # A registered copy of a schema we ship reuses our parsed object, keeping the no-resolution fast path.
        writer = fmt.writers.get(fp, parsed)
        if len(self._writers_by_id) >= _MAX_CACHED_SCHEMA_IDS:
            self._writers_by_id.clear()
        self._writers_by_id[schema_id] = writer
        return writer
