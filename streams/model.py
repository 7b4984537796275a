"""Frozen value types of the wire records (WalEntry, ChangeEvent, RetryEnvelope, DeadLetter) and their dict mapping."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

_MAX_LONG = 2**63 - 1
_MAX_INT = 2**31 - 1

#: The Kafka header that carries a WAL record's entry id, so tools can find an entry without decoding it.
ENTRY_ID_HEADER = "walstream-entry-id"
#: Headers of an entry a retry tier handed back to its log: the attempts made so far, and the first error.
ATTEMPT_HEADER = "walstream-attempt"
FIRST_ERROR_HEADER = "walstream-first-error"


#: Entry ids are uuid4 hex strings drawn from one read of the system's randomness per this many ids: a read per
#: entry costs more than the rest of the id, and releases the interpreter lock to a busy producer thread.
_IDS_PER_DRAW = 512
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version nibble and the variant's two bits
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, variant RFC 4122
_entry_ids: list[str] = []


def _draw_entry_ids() -> None:
    raw = os.urandom(16 * _IDS_PER_DRAW)
    clear, set_ = _UUID4_CLEAR, _UUID4_SET
    _entry_ids.extend(f"{(int.from_bytes(raw[i : i + 16]) & clear) | set_:032x}" for i in range(0, len(raw), 16))


def new_entry_id() -> str:
    """A fresh entry id: what ``uuid.uuid4().hex`` gives. Thread-safe: ``list.pop`` is atomic, and each id comes
    from its own 16 random bytes, so two threads never get the same one."""
    while True:
        try:
            return _entry_ids.pop()
        except IndexError:
            _draw_entry_ids()


# A forked child must not hand out the ids its parent still holds.
os.register_at_fork(after_in_child=_entry_ids.clear)


class Op(StrEnum):
    """What an entry does to its key."""

    UPSERT = "UPSERT"
    DELETE = "DELETE"


class ChangeOp(StrEnum):
    """Debezium's operation codes. An upsert cannot tell a create from an update, so the pipeline emits ``u``."""

    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"


class ErrorClass(StrEnum):
    """Why a record went to the dead-letter topic (the schema keeps a plain string so new classes stay readable)."""

    UNDECODABLE = "undecodable"
    FATAL = "fatal"
    EXHAUSTED = "exhausted"
    UNAUTHORIZED = "unauthorized"


def _require_text(owner: str, name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{owner}.{name} must be a non-empty string, got {value!r}")


def _require_int(owner: str, name: str, value: object, *, low: int = 0, high: int = _MAX_LONG) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{owner}.{name} must be an integer in [{low}, {high}], got {value!r}")


def _names(owner: str, name: str, values: Iterable[str]) -> tuple[str, ...]:
    """A tuple of distinct non-empty strings; strings themselves are refused (a str is an iterable of letters)."""
    if isinstance(values, str | bytes):
        raise ValueError(f"{owner}.{name} must be a sequence of names, not a single string")
    names = tuple(values)
    for item in names:
        _require_text(owner, name, item)
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}.{name} must not repeat a name, got {names!r}")
    return names


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """When an entry was first written and how long to hold it before applying it."""

    original_write_time: int  # microseconds since the epoch
    delay_ms: int = 0
    jitter_ms: int = 0

    def __post_init__(self) -> None:
        written, delay, jitter = self.original_write_time, self.delay_ms, self.jitter_ms
        if (
            type(written) is int
            and type(delay) is int
            and type(jitter) is int
            and min(written, delay, jitter) >= 0
            and max(written, delay, jitter) <= _MAX_LONG
        ):
            return  # the usual case, checked at once (the SDK builds one per write)
        _require_int("Lifecycle", "original_write_time", written)
        _require_int("Lifecycle", "delay_ms", delay)
        _require_int("Lifecycle", "jitter_ms", jitter)

    def to_record(self) -> dict[str, Any]:
        return {
            "original_write_time": self.original_write_time,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Lifecycle:
        return cls(record["original_write_time"], record["delay_ms"], record["jitter_ms"])


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """The place of an entry in a multi-key batch written in one Kafka transaction."""

    id: str
    index: int
    count: int

    def __post_init__(self) -> None:
        _require_text("BatchInfo", "id", self.id)
        _require_int("BatchInfo", "count", self.count, low=1, high=_MAX_INT)
        _require_int("BatchInfo", "index", self.index, high=self.count - 1)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "index": self.index, "count": self.count}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BatchInfo:
        return cls(record["id"], record["index"], record["count"])


#: The headers of every entry without any: a read-only view of a dict nobody else holds.
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class WalEntry:
    """One write to a namespace's log: a versioned upsert or delete of one key."""

    entry_id: str
    namespace: str
    key: str
    op: Op
    sequence: int  # the version: microseconds, newest wins
    payload: bytes
    lifecycle: Lifecycle
    targets: tuple[str, ...] = ()  # empty: every target of the namespace
    idempotency_key: str | None = None
    batch: BatchInfo | None = None
    # Read-only view; excluded from the hash because a mapping is not hashable.
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        entry_id, namespace, key, sequence = self.entry_id, self.namespace, self.key, self.sequence
        if not (
            type(entry_id) is str
            and type(namespace) is str
            and type(key) is str
            and entry_id
            and namespace
            and key
            and type(sequence) is int
            and 0 <= sequence <= _MAX_LONG
        ):  # the usual case passes at once; otherwise the checks below name what is wrong
            _require_text("WalEntry", "entry_id", entry_id)
            _require_text("WalEntry", "namespace", namespace)
            _require_text("WalEntry", "key", key)
            _require_int("WalEntry", "sequence", sequence)
        if type(self.op) is not Op:
            object.__setattr__(self, "op", Op(self.op))
        if not isinstance(self.payload, bytes):
            raise ValueError(f"WalEntry.payload must be bytes, got {type(self.payload).__name__}")
        if self.op is Op.DELETE and self.payload:
            raise ValueError("WalEntry.payload must be empty for a DELETE")
        if not isinstance(self.lifecycle, Lifecycle):
            raise ValueError("WalEntry.lifecycle must be a Lifecycle")
        if self.targets != ():  # the common case (every target) needs no checking
            object.__setattr__(self, "targets", _names("WalEntry", "targets", self.targets))
        if self.idempotency_key is not None:
            _require_text("WalEntry", "idempotency_key", self.idempotency_key)
        if self.batch is not None and not isinstance(self.batch, BatchInfo):
            raise ValueError("WalEntry.batch must be a BatchInfo or None")
        if self.headers is _NO_HEADERS or self.headers == {}:
            object.__setattr__(self, "headers", _NO_HEADERS)
            return
        headers = dict(self.headers)
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ValueError(f"WalEntry.headers must map strings to strings, got {name!r}: {value!r}")
        object.__setattr__(self, "headers", MappingProxyType(headers))

    def to_record(self) -> dict[str, Any]:
        """The dict fastavro writes with the WalEntry schema."""
        return {
            "entry_id": self.entry_id,
            "namespace": self.namespace,
            "key": self.key,
            "op": self.op.value,
            "sequence": self.sequence,
            "payload": self.payload,
            "targets": list(self.targets),
            "idempotency_key": self.idempotency_key,
            "lifecycle": self.lifecycle.to_record(),
            "batch": None if self.batch is None else self.batch.to_record(),
            "headers": dict(self.headers),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> WalEntry:
        """Build from the dict fastavro reads; raises ValueError when a value breaks an invariant."""
        batch = record["batch"]
        return cls(
            entry_id=record["entry_id"],
            namespace=record["namespace"],
            key=record["key"],
            op=Op(record["op"]),
            sequence=record["sequence"],
            payload=record["payload"],
            lifecycle=Lifecycle.from_record(record["lifecycle"]),
            targets=tuple(record["targets"]),
            idempotency_key=record["idempotency_key"],
            batch=None if batch is None else BatchInfo.from_record(batch),
            headers=record["headers"],
        )


def new_entry(
    namespace: str,
    key: str,
    op: Op,
    payload: bytes,
    *,
    sequence: int | None = None,
    targets: Iterable[str] = (),
    idempotency_key: str | None = None,
    delay_ms: int = 0,
    jitter_ms: int = 0,
    headers: Mapping[str, str] | None = None,
    now_us: int | None = None,
) -> WalEntry:
    """A new entry with a fresh id; its sequence defaults to its write time in microseconds (last writer wins)."""
    written_us = time.time_ns() // 1_000 if now_us is None else now_us
    # Positional: matching eleven keywords costs more than building the entry (the SDK builds one per write).
    return WalEntry(
        new_entry_id(),
        namespace,
        key,
        op,
        written_us if sequence is None else sequence,
        payload,
        Lifecycle(written_us, delay_ms, jitter_ms),
        targets if type(targets) is tuple else tuple(targets),
        idempotency_key,
        None,  # batch
        headers or _NO_HEADERS,  # copied and checked by WalEntry
    )


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record was read from."""

    topic: str
    partition: int
    offset: int

    def __post_init__(self) -> None:
        _require_text("Origin", "topic", self.topic)
        _require_int("Origin", "partition", self.partition, high=_MAX_INT)
        _require_int("Origin", "offset", self.offset)

    def to_record(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Origin:
        return cls(record["topic"], record["partition"], record["offset"])


@dataclass(frozen=True, slots=True)
class Source:
    """The entry and log position a change event comes from."""

    namespace: str
    topic: str
    partition: int
    offset: int
    sequence: int
    entry_id: str

    def __post_init__(self) -> None:
        _require_text("Source", "namespace", self.namespace)
        _require_text("Source", "topic", self.topic)
        _require_int("Source", "partition", self.partition, high=_MAX_INT)
        _require_int("Source", "offset", self.offset)
        _require_int("Source", "sequence", self.sequence)
        _require_text("Source", "entry_id", self.entry_id)

    def to_record(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "sequence": self.sequence,
            "entry_id": self.entry_id,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Source:
        return cls(
            record["namespace"],
            record["topic"],
            record["partition"],
            record["offset"],
            record["sequence"],
            record["entry_id"],
        )


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A Debezium-style event saying an entry was applied to all of its targets."""

    op: ChangeOp
    key: str
    after: bytes | None  # the payload; None for a delete
    source: Source
    ts_ms: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "op", ChangeOp(self.op))
        _require_text("ChangeEvent", "key", self.key)
        if self.op is ChangeOp.DELETE and self.after is not None:
            raise ValueError("ChangeEvent.after must be None for a delete")
        if self.op is not ChangeOp.DELETE and not isinstance(self.after, bytes):
            raise ValueError(f"ChangeEvent.after must be bytes for op {self.op.value!r}")
        if not isinstance(self.source, Source):
            raise ValueError("ChangeEvent.source must be a Source")
        _require_int("ChangeEvent", "ts_ms", self.ts_ms)

    @classmethod
    def for_entry(cls, entry: WalEntry, origin: Origin, ts_ms: int, op: ChangeOp | None = None) -> ChangeEvent:
        """The change event announcing that ``entry``, read at ``origin``, was applied. ``op`` says what it did
        to the key (c, u or d); by default d for a delete and u otherwise."""
        return cls.from_record(change_record(entry, origin, ts_ms, op))

    def to_record(self) -> dict[str, Any]:
        return {
            "op": self.op.value,
            "key": self.key,
            "after": self.after,
            "source": self.source.to_record(),
            "ts_ms": self.ts_ms,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ChangeEvent:
        return cls(
            op=ChangeOp(record["op"]),
            key=record["key"],
            after=record["after"],
            source=Source.from_record(record["source"]),
            ts_ms=record["ts_ms"],
        )


def change_record(entry: WalEntry, origin: Origin, ts_ms: int, op: ChangeOp | None = None) -> dict[str, Any]:
    """The wire record of the change event announcing ``entry`` (what ``ChangeEvent.for_entry(...).to_record()``
    gives), built straight from values that were checked already: the worker encodes one per applied entry."""
    deleted = entry.op is Op.DELETE
    return {
        "op": (op if op is not None else (ChangeOp.DELETE if deleted else ChangeOp.UPDATE)).value,
        "key": entry.key,
        "after": None if deleted else entry.payload,
        "source": {
            "namespace": entry.namespace,
            "topic": origin.topic,
            "partition": origin.partition,
            "offset": origin.offset,
            "sequence": entry.sequence,
            "entry_id": entry.entry_id,
        },
        "ts_ms": ts_ms,
    }


@dataclass(frozen=True, slots=True)
class RetryEnvelope:
    """An entry parked in a retry tier until ``due_ms``, with the targets that still need it."""

    entry: WalEntry
    attempt: int  # attempts made so far (0: a delayed entry not tried yet)
    due_ms: int
    pending_targets: tuple[str, ...]
    first_error: str
    last_error: str
    origin: Origin
    tier: str

    def __post_init__(self) -> None:
        if not isinstance(self.entry, WalEntry):
            raise ValueError("RetryEnvelope.entry must be a WalEntry")
        _require_int("RetryEnvelope", "attempt", self.attempt, low=0, high=_MAX_INT)
        _require_int("RetryEnvelope", "due_ms", self.due_ms)
        pending = _names("RetryEnvelope", "pending_targets", self.pending_targets)
        if not pending:
            raise ValueError("RetryEnvelope.pending_targets must name at least one target")
        object.__setattr__(self, "pending_targets", pending)
        _require_text("RetryEnvelope", "tier", self.tier)
        if not isinstance(self.origin, Origin):
            raise ValueError("RetryEnvelope.origin must be an Origin")

    def to_record(self) -> dict[str, Any]:
        return {
            "entry": self.entry.to_record(),
            "attempt": self.attempt,
            "due_ms": self.due_ms,
            "pending_targets": list(self.pending_targets),
            "first_error": self.first_error,
            "last_error": self.last_error,
            "origin": self.origin.to_record(),
            "tier": self.tier,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RetryEnvelope:
        return cls(
            entry=WalEntry.from_record(record["entry"]),
            attempt=record["attempt"],
            due_ms=record["due_ms"],
            pending_targets=tuple(record["pending_targets"]),
            first_error=record["first_error"],
            last_error=record["last_error"],
            origin=Origin.from_record(record["origin"]),
            tier=record["tier"],
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that will not be applied: the bytes as received, the entry if it decoded, and why."""

    raw: bytes
    entry: WalEntry | None
    reason: str
    error_class: str  # an ErrorClass value; a plain string on the wire
    attempts: int
    pending_targets: tuple[str, ...]
    origin: Origin
    failed_at_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes):
            raise ValueError(f"DeadLetter.raw must be bytes, got {type(self.raw).__name__}")
        if self.entry is not None and not isinstance(self.entry, WalEntry):
            raise ValueError("DeadLetter.entry must be a WalEntry or None")
        _require_text("DeadLetter", "reason", self.reason)
        _require_text("DeadLetter", "error_class", self.error_class)
        _require_int("DeadLetter", "attempts", self.attempts, high=_MAX_INT)
        object.__setattr__(self, "pending_targets", _names("DeadLetter", "pending_targets", self.pending_targets))
        if not isinstance(self.origin, Origin):
            raise ValueError("DeadLetter.origin must be an Origin")
        _require_int("DeadLetter", "failed_at_ms", self.failed_at_ms)

    def to_record(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "entry": None if self.entry is None else self.entry.to_record(),
            "reason": self.reason,
            "error_class": str(self.error_class),
            "attempts": self.attempts,
            "pending_targets": list(self.pending_targets),
            "origin": self.origin.to_record(),
            "failed_at_ms": self.failed_at_ms,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DeadLetter:
        entry = record["entry"]
        return cls(
            raw=record["raw"],
            entry=None if entry is None else WalEntry.from_record(entry),
            reason=record["reason"],
            error_class=record["error_class"],
            attempts=record["attempts"],
            pending_targets=tuple(record["pending_targets"]),
            origin=Origin.from_record(record["origin"]),
            failed_at_ms=record["failed_at_ms"],
        )
