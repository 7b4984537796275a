"""Checks API requests against their namespace and turns them into WalEntry values, naming the field at fault."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from streams.api.messages import BatchRequest, BulkDeleteRequest, LifecycleSpec, WriteRequest, op_of
from streams.api.rejections import RejectCode, Rejected, Rejection, invalid
from streams.model import BatchInfo, Lifecycle, Op, WalEntry
from streams.namespaces import Namespace, UnknownTargetError
from streams.payload import PayloadCodec, PayloadError

_MAX_LONG = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on request fields the namespace does not set itself."""

    #: Elasticsearch refuses a document _id over 512 bytes, and the key becomes the _id.
    max_key_bytes: int = 512
    max_idempotency_key_chars: int = 256
    #: The longest hold an entry may ask for (delay, plus spread for bulk deletes).
    max_delay_ms: int = 7 * 24 * 3_600_000
    #: How far in the future original_write_time_us may be: catches milliseconds or nanoseconds sent by mistake.
    max_clock_skew_us: int = 3_600 * 1_000_000
    max_batch_entries: int = 1_000
    max_bulk_keys: int = 10_000


@dataclass(frozen=True, slots=True)
class ValidWrite:
    """A write whose every field was checked; ``write_time_us`` 0 means the server picks it."""

    key: str
    op: Op
    payload: bytes
    targets: tuple[str, ...]
    sequence: int | None
    write_time_us: int
    delay_ms: int
    jitter_ms: int


@dataclass(frozen=True, slots=True)
class ValidBulkDelete:
    keys: tuple[str, ...]
    targets: tuple[str, ...]
    delay_ms: int
    spread_ms: int
    jitter_ms: int
    write_time_us: int


def derive_id(*parts: str) -> str:
    """A stable 32-hex-digit id from its parts: a retry with the same idempotency key gets the same entry id."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:32]


class RequestValidator:
    """Validates requests for a fixed set of namespaces; pure apart from the clock value passed in."""

    def __init__(self, namespaces: Mapping[str, Namespace], limits: Limits | None = None) -> None:
        self._namespaces = dict(namespaces)
        self._payloads = {name: PayloadCodec(ns.payload) for name, ns in self._namespaces.items()}
        self.limits = limits or Limits()

    def namespace(self, name: str) -> Namespace:
        """The namespace called ``name``; refuses an empty name (INVALID_ARGUMENT) and an unknown one (NOT_FOUND)."""
        if not name:
            raise invalid("namespace", "is required")
        ns = self._namespaces.get(name)
        if ns is None:
            raise Rejected(Rejection(RejectCode.NOT_FOUND, "namespace", f"no namespace {name[:100]!r} on this server"))
        return ns

    # -- WriteToLog --------------------------------------------------------------------------------------------------

    def write(self, ns: Namespace, request: WriteRequest, now_us: int) -> ValidWrite:
        self._idempotency_key(request.idempotency_key)
        lifecycle = request.lifecycle
        write_time = self._write_time("lifecycle.original_write_time_us", lifecycle.original_write_time_us, now_us)
        fields = (request.key, request.op, request.payload, request.targets)
        return self._entry_fields(ns, "", fields, request.lifecycle, request.sequence, write_time)

    # -- WriteBatch --------------------------------------------------------------------------------------------------

    def batch(self, ns: Namespace, request: BatchRequest, now_us: int) -> tuple[int, tuple[ValidWrite, ...]]:
        """The batch's write time (0: the server picks it) and its checked entries, in request order."""
        self._idempotency_key(request.idempotency_key)
        write_time = self._write_time("original_write_time_us", request.original_write_time_us, now_us)
        if not request.entries:
            raise invalid("entries", "a batch needs at least one entry")
        if len(request.entries) > self.limits.max_batch_entries:
            raise invalid(
                "entries", f"{len(request.entries)} entries is over the limit of {self.limits.max_batch_entries}"
            )
        checked = []
        for index, spec in enumerate(request.entries):
            prefix = f"entries[{index}]."
            if spec.lifecycle.original_write_time_us:
                raise invalid(
                    f"{prefix}lifecycle.original_write_time_us",
                    "a batch has one write time: set the request's original_write_time_us instead",
                )
            fields = (spec.key, spec.op, spec.payload, spec.targets)
            checked.append(self._entry_fields(ns, prefix, fields, spec.lifecycle, spec.sequence, write_time))
        return write_time, tuple(checked)

    # -- BulkDelete --------------------------------------------------------------------------------------------------

    def bulk_delete(self, ns: Namespace, request: BulkDeleteRequest, now_us: int) -> ValidBulkDelete:
        self._idempotency_key(request.idempotency_key)
        write_time = self._write_time("original_write_time_us", request.original_write_time_us, now_us)
        if not request.keys:
            raise invalid("keys", "at least one key is required")
        if len(request.keys) > self.limits.max_bulk_keys:
            raise invalid("keys", f"{len(request.keys)} keys is over the limit of {self.limits.max_bulk_keys}")
        seen: dict[str, int] = {}
        for index, key in enumerate(request.keys):
            self._key(f"keys[{index}]", key)
            if key in seen:
                raise invalid(f"keys[{index}]", f"repeats keys[{seen[key]}]")
            seen[key] = index
        targets = self._targets(ns, "targets", request.targets)
        for name, value in (("delay_ms", request.delay_ms), ("spread_ms", request.spread_ms)):
            self._non_negative(name, value)
        self._non_negative("jitter_ms", request.jitter_ms)
        if request.delay_ms + request.spread_ms > self.limits.max_delay_ms:
            raise invalid(
                "spread_ms", f"delay_ms plus spread_ms is over the longest hold of {self.limits.max_delay_ms} ms"
            )
        if request.jitter_ms > self.limits.max_delay_ms:
            raise invalid("jitter_ms", f"is over the longest hold of {self.limits.max_delay_ms} ms")
        return ValidBulkDelete(
            request.keys, targets, request.delay_ms, request.spread_ms, request.jitter_ms, write_time
        )

    # -- fields ------------------------------------------------------------------------------------------------------

    def _entry_fields(
        self,
        ns: Namespace,
        prefix: str,
        fields: tuple[str, int, bytes, tuple[str, ...]],
        lifecycle: LifecycleSpec,
        sequence: int | None,
        write_time: int,
    ) -> ValidWrite:
        key, op_value, payload, requested = fields
        self._key(f"{prefix}key", key)
        op = op_of(op_value)
        if op is None:
            raise invalid(f"{prefix}op", f"must be UPSERT or DELETE, got {op_value}")
        body = self._payload(ns, f"{prefix}payload", op, payload)
        targets = self._targets(ns, f"{prefix}targets", requested)
        if sequence is not None and sequence > _MAX_LONG:
            raise invalid(f"{prefix}sequence", f"must be at most {_MAX_LONG}, got {sequence}")
        self._non_negative(f"{prefix}lifecycle.delay_ms", lifecycle.delay_ms)
        self._non_negative(f"{prefix}lifecycle.jitter_ms", lifecycle.jitter_ms)
        if lifecycle.delay_ms > self.limits.max_delay_ms:
            raise invalid(f"{prefix}lifecycle.delay_ms", f"is over the longest hold of {self.limits.max_delay_ms} ms")
        if lifecycle.jitter_ms > self.limits.max_delay_ms:
            raise invalid(f"{prefix}lifecycle.jitter_ms", f"is over the longest hold of {self.limits.max_delay_ms} ms")
        return ValidWrite(key, op, body, targets, sequence, write_time, lifecycle.delay_ms, lifecycle.jitter_ms)

    def _key(self, field: str, key: str) -> None:
        if not key:
            raise invalid(field, "must not be empty")
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_key_bytes:
            raise invalid(field, f"is {size} bytes, over the limit of {self.limits.max_key_bytes}")

    def _payload(self, ns: Namespace, field: str, op: Op, payload: bytes) -> bytes:
        if op is Op.DELETE:
            if payload:
                raise invalid(field, "must be empty for a DELETE")
            return b""
        if not payload:
            raise invalid(field, "an UPSERT needs a payload")
        # INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: the same payload is refused however long the caller waits.
        if len(payload) > ns.payload.max_bytes:
            raise invalid(field, f"{len(payload)} bytes is over the namespace's limit of {ns.payload.max_bytes}")
        try:
            self._payloads[ns.name].decode(payload)
        except PayloadError as exc:
            raise invalid(field, str(exc)) from None
        return payload

    @staticmethod
    def _targets(ns: Namespace, field: str, requested: Sequence[str]) -> tuple[str, ...]:
        if not requested:
            return ()
        try:
            return ns.resolve_targets(list(requested))
        except UnknownTargetError as exc:
            raise invalid(field, str(exc)) from None

    @staticmethod
    def _non_negative(field: str, value: int) -> None:
        if value < 0:
            raise invalid(field, f"must not be negative, got {value}")

    def _idempotency_key(self, key: str) -> None:
        if len(key) > self.limits.max_idempotency_key_chars:
            limit = self.limits.max_idempotency_key_chars
            raise invalid("idempotency_key", f"is {len(key)} characters, over the limit of {limit}")

    def _write_time(self, field: str, value: int, now_us: int) -> int:
        if value > now_us + self.limits.max_clock_skew_us:
            raise invalid(field, f"{value} is in the future; it counts microseconds since the epoch (now {now_us})")
        return value


# -- building entries --------------------------------------------------------------------------------------------------


def build_entry(
    namespace: str,
    write: ValidWrite,
    *,
    entry_id: str,
    write_time_us: int,
    sequence: int | None = None,
    idempotency_key: str | None = None,
    batch: BatchInfo | None = None,
    headers: Mapping[str, str] | None = None,
) -> WalEntry:
    """The entry for a checked write; its sequence is the request's, else ``sequence``, else the write time."""
    chosen = write.sequence if write.sequence is not None else sequence if sequence is not None else write_time_us
    return WalEntry(
        entry_id=entry_id,
        namespace=namespace,
        key=write.key,
        op=write.op,
        sequence=chosen,
        payload=write.payload,
        lifecycle=Lifecycle(write_time_us, write.delay_ms, write.jitter_ms),
        targets=write.targets,
        idempotency_key=idempotency_key or None,
        batch=batch,
        headers=MappingProxyType(dict(headers or {})),
    )


def bulk_delete_entries(
    namespace: str,
    request: ValidBulkDelete,
    *,
    scope: str,
    write_time_us: int,
    idempotency_key: str | None,
    headers: Mapping[str, str] | None = None,
) -> tuple[WalEntry, ...]:
    """One DELETE per key, each held for delay_ms plus a uniform share of spread_ms.

    The random draws are seeded by ``scope`` (which holds the idempotency key, when there is one), so a retry
    builds the very same entries: same ids, same delays.
    """
    rng = random.Random(scope)
    entries = []
    for index, key in enumerate(request.keys):
        extra = rng.randint(0, request.spread_ms) if request.spread_ms else 0
        entries.append(
            WalEntry(
                entry_id=derive_id(scope, str(index)),
                namespace=namespace,
                key=key,
                op=Op.DELETE,
                sequence=write_time_us,
                payload=b"",
                lifecycle=Lifecycle(write_time_us, request.delay_ms + extra, request.jitter_ms),
                targets=request.targets,
                idempotency_key=idempotency_key,
                headers=MappingProxyType(dict(headers or {})),
            )
        )
    return tuple(entries)
