"""Frozen request/response values of the gRPC API and their conversion to and from protobuf bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError as _ProtoDecodeError
from google.protobuf.message import EncodeError as _ProtoEncodeError

from streams.api.codegen import load_wal_messages
from streams.api.rejections import RejectCode, Rejection
from streams.model import Op
from streams.ports import Delivery, Durable

#: The generated message classes; typed loosely because they are generated at build time, not committed.
_pb: Any = load_wal_messages()

SERVICE_NAME: str = _pb.DESCRIPTOR.services_by_name["WalService"].full_name
WRITE_TO_LOG = f"/{SERVICE_NAME}/WriteToLog"
WRITE_BATCH = f"/{SERVICE_NAME}/WriteBatch"
BULK_DELETE = f"/{SERVICE_NAME}/BulkDelete"
WRITE_STREAM = f"/{SERVICE_NAME}/WriteStream"

#: Wire values of the Op enum (0 is OP_UNSPECIFIED, which is refused).
OP_CODES: dict[Op, int] = {Op.UPSERT: 1, Op.DELETE: 2}
_OPS_BY_CODE: dict[int, Op] = {code: op for op, code in OP_CODES.items()}
_DURABLE_CODES: dict[Durable, int] = {Durable.TRUE: 1, Durable.FALSE: 2, Durable.UNKNOWN: 3}
_DURABLE_BY_CODE: dict[int, Durable] = {code: durable for durable, code in _DURABLE_CODES.items()}


class MalformedMessage(ValueError):
    """Bytes that are not a valid protobuf encoding of the expected message."""


def op_of(code: int) -> Op | None:
    """The Op a wire value stands for, or None for OP_UNSPECIFIED and values this server does not know."""
    return _OPS_BY_CODE.get(code)


def op_code(op: Op | str | int) -> int:
    """The wire value of an op given as Op, its name, or already as a number (numbers pass unchanged)."""
    if isinstance(op, int):
        return op
    return OP_CODES[Op(op)]


# -- values ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LifecycleSpec:
    """The lifecycle a caller asks for; 0 as the write time means "now"."""

    original_write_time_us: int = 0
    delay_ms: int = 0
    jitter_ms: int = 0


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """WriteToLog's request as received: nothing in it is validated yet."""

    namespace: str
    key: str
    op: int  # the wire value: 1 UPSERT, 2 DELETE
    payload: bytes = b""
    targets: tuple[str, ...] = ()
    idempotency_key: str = ""
    sequence: int | None = None
    lifecycle: LifecycleSpec = LifecycleSpec()


@dataclass(frozen=True, slots=True)
class BatchEntrySpec:
    """One entry of a WriteBatch request, not validated yet."""

    key: str
    op: int
    payload: bytes = b""
    targets: tuple[str, ...] = ()
    sequence: int | None = None
    lifecycle: LifecycleSpec = LifecycleSpec()


@dataclass(frozen=True, slots=True)
class BatchRequest:
    namespace: str
    entries: tuple[BatchEntrySpec, ...]
    idempotency_key: str = ""
    original_write_time_us: int = 0


@dataclass(frozen=True, slots=True)
class EntryAck:
    """Where one entry of a batch landed (partition -1 when it was not stored)."""

    entry_id: str
    partition: int = -1
    offset: int = -1

    @classmethod
    def of(cls, delivery: Delivery) -> EntryAck:
        return cls(delivery.entry_id, delivery.partition, delivery.offset)


@dataclass(frozen=True, slots=True)
class BatchResponse:
    durable: Durable
    message: str = ""
    batch_id: str = ""
    entries: tuple[EntryAck, ...] = ()


@dataclass(frozen=True, slots=True)
class BulkDeleteRequest:
    namespace: str
    keys: tuple[str, ...]
    targets: tuple[str, ...] = ()
    delay_ms: int = 0
    spread_ms: int = 0
    jitter_ms: int = 0
    idempotency_key: str = ""
    original_write_time_us: int = 0


@dataclass(frozen=True, slots=True)
class BulkDeleteResponse:
    durable: Durable
    message: str = ""
    entries: tuple[EntryAck, ...] = ()
    stored: int = 0


# -- protobuf conversion -----------------------------------------------------------------------------------------------


def _parse(message_type: Any, data: bytes) -> Any:
    message = message_type()
    try:
        message.ParseFromString(data)
    except (_ProtoDecodeError, RuntimeError, ValueError) as exc:
        raise MalformedMessage(f"not a valid {message_type.DESCRIPTOR.name}: {exc}") from None
    return message


def _serialize(message: Any) -> bytes:
    try:
        return bytes(message.SerializeToString())
    except _ProtoEncodeError as exc:  # pragma: no cover - every field here is always initialized
        raise MalformedMessage(str(exc)) from None


def _lifecycle_from(message: Any) -> LifecycleSpec:
    return LifecycleSpec(message.original_write_time_us, message.delay_ms, message.jitter_ms)


def _lifecycle_to(spec: LifecycleSpec) -> Any:
    return _pb.Lifecycle(
        original_write_time_us=spec.original_write_time_us, delay_ms=spec.delay_ms, jitter_ms=spec.jitter_ms
    )


def _durable_from(code: int) -> Durable:
    durable = _DURABLE_BY_CODE.get(code)
    if durable is None:
        raise MalformedMessage(f"durable value {code} is none of TRUE, FALSE or UNKNOWN")
    return durable


def _acks_from(messages: Any) -> tuple[EntryAck, ...]:
    return tuple(EntryAck(m.entry_id, m.partition, m.offset) for m in messages)


def _acks_to(acks: tuple[EntryAck, ...]) -> list[Any]:
    return [_pb.EntryAck(entry_id=a.entry_id, partition=a.partition, offset=a.offset) for a in acks]


def decode_write_request(data: bytes) -> WriteRequest:
    return _write_request_from(_parse(_pb.WriteToLogRequest, data))


def encode_write_request(request: WriteRequest) -> bytes:
    m = _pb.WriteToLogRequest(
        namespace=request.namespace,
        key=request.key,
        op=request.op,
        payload=request.payload,
        targets=list(request.targets),
        idempotency_key=request.idempotency_key,
        lifecycle=_lifecycle_to(request.lifecycle),
    )
    if request.sequence is not None:
        m.sequence = request.sequence
    return _serialize(m)


def encode_write_response(response: Delivery) -> bytes:
    """The wire form of a write's durable answer (WriteToLogResponse)."""
    return _serialize(
        _pb.WriteToLogResponse(
            durable=_DURABLE_CODES[response.durable],
            message=response.message,
            entry_id=response.entry_id,
            partition=response.partition,
            offset=response.offset,
        )
    )


def decode_write_response(data: bytes) -> Delivery:
    m = _parse(_pb.WriteToLogResponse, data)
    return Delivery(_durable_from(m.durable), m.message, partition=m.partition, offset=m.offset, entry_id=m.entry_id)


def decode_batch_request(data: bytes) -> BatchRequest:
    m = _parse(_pb.WriteBatchRequest, data)
    entries = tuple(
        BatchEntrySpec(
            key=e.key,
            op=int(e.op),
            payload=bytes(e.payload),
            targets=tuple(e.targets),
            sequence=e.sequence if e.HasField("sequence") else None,
            lifecycle=_lifecycle_from(e.lifecycle),
        )
        for e in m.entries
    )
    return BatchRequest(m.namespace, entries, m.idempotency_key, m.original_write_time_us)


def encode_batch_request(request: BatchRequest) -> bytes:
    entries = []
    for spec in request.entries:
        e = _pb.BatchEntry(
            key=spec.key,
            op=spec.op,
            payload=spec.payload,
            targets=list(spec.targets),
            lifecycle=_lifecycle_to(spec.lifecycle),
        )
        if spec.sequence is not None:
            e.sequence = spec.sequence
        entries.append(e)
    return _serialize(
        _pb.WriteBatchRequest(
            namespace=request.namespace,
            entries=entries,
            idempotency_key=request.idempotency_key,
            original_write_time_us=request.original_write_time_us,
        )
    )


def encode_batch_response(response: BatchResponse) -> bytes:
    return _serialize(
        _pb.WriteBatchResponse(
            durable=_DURABLE_CODES[response.durable],
            message=response.message,
            batch_id=response.batch_id,
            entries=_acks_to(response.entries),
        )
    )


def decode_batch_response(data: bytes) -> BatchResponse:
    m = _parse(_pb.WriteBatchResponse, data)
    return BatchResponse(_durable_from(m.durable), m.message, m.batch_id, _acks_from(m.entries))


def decode_bulk_delete_request(data: bytes) -> BulkDeleteRequest:
    m = _parse(_pb.BulkDeleteRequest, data)
    return BulkDeleteRequest(
        namespace=m.namespace,
        keys=tuple(m.keys),
        targets=tuple(m.targets),
        delay_ms=m.delay_ms,
        spread_ms=m.spread_ms,
        jitter_ms=m.jitter_ms,
        idempotency_key=m.idempotency_key,
        original_write_time_us=m.original_write_time_us,
    )


def encode_bulk_delete_request(request: BulkDeleteRequest) -> bytes:
    return _serialize(
        _pb.BulkDeleteRequest(
            namespace=request.namespace,
            keys=list(request.keys),
            targets=list(request.targets),
            delay_ms=request.delay_ms,
            spread_ms=request.spread_ms,
            jitter_ms=request.jitter_ms,
            idempotency_key=request.idempotency_key,
            original_write_time_us=request.original_write_time_us,
        )
    )


def encode_bulk_delete_response(response: BulkDeleteResponse) -> bytes:
    return _serialize(
        _pb.BulkDeleteResponse(
            durable=_DURABLE_CODES[response.durable],
            message=response.message,
            entries=_acks_to(response.entries),
            stored=response.stored,
        )
    )


def decode_bulk_delete_response(data: bytes) -> BulkDeleteResponse:
    m = _parse(_pb.BulkDeleteResponse, data)
    return BulkDeleteResponse(_durable_from(m.durable), m.message, _acks_from(m.entries), m.stored)


# -- WriteStream -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamAnswer:
    """The answer to one entry of a WriteStream: its durable answer, or the rejection that kept it from the log."""

    request_id: int
    delivery: Delivery | None = None
    rejection: Rejection | None = None


def _write_request_from(e: Any) -> WriteRequest:
    return WriteRequest(
        namespace=e.namespace,
        key=e.key,
        op=int(e.op),
        payload=bytes(e.payload),
        targets=tuple(e.targets),
        idempotency_key=e.idempotency_key,
        sequence=e.sequence if e.HasField("sequence") else None,
        lifecycle=_lifecycle_from(e.lifecycle),
    )


def decode_stream_request(data: bytes) -> list[tuple[int, WriteRequest]]:
    """The entries of a WriteStreamRequest, each with its request id, in the order they were sent."""
    m = _parse(_pb.WriteStreamRequest, data)
    return [(int(item.request_id), _write_request_from(item.entry)) for item in m.entries]


def encode_stream_entry(request_id: int, request: WriteRequest) -> bytes:
    """A WriteStreamRequest of one entry. Protobuf concatenates repeated fields, so ``b"".join`` of several of
    these is the WriteStreamRequest of all their entries: a client encodes an entry once, when it is submitted."""
    m = _pb.WriteStreamRequest()
    item = m.entries.add()
    item.request_id = request_id
    e = item.entry
    e.namespace = request.namespace
    e.key = request.key
    e.op = request.op
    e.payload = request.payload
    e.targets.extend(request.targets)
    e.idempotency_key = request.idempotency_key
    lifecycle = request.lifecycle
    if lifecycle.original_write_time_us or lifecycle.delay_ms or lifecycle.jitter_ms:
        e.lifecycle.original_write_time_us = lifecycle.original_write_time_us
        e.lifecycle.delay_ms = lifecycle.delay_ms
        e.lifecycle.jitter_ms = lifecycle.jitter_ms
    if request.sequence is not None:
        e.sequence = request.sequence
    return _serialize(m)


def encode_stream_answers(answers: Sequence[StreamAnswer]) -> bytes:
    """One WriteStreamResponse of the answers, in order."""
    m = _pb.WriteStreamResponse()
    add = m.answers.add
    durable_codes = _DURABLE_CODES
    for answer in answers:
        item = add()
        item.request_id = answer.request_id
        d = answer.delivery
        if d is not None:
            a = item.answer
            a.durable = durable_codes[d.durable]
            if d.message:
                a.message = d.message
            a.entry_id = d.entry_id
            a.partition = d.partition
            a.offset = d.offset
        elif answer.rejection is not None:
            r = answer.rejection
            item.rejection.code = r.code.value
            item.rejection.field = r.field
            item.rejection.message = r.message
    return _serialize(m)


def _stream_answer_from(item: Any) -> StreamAnswer:
    if item.HasField("rejection"):
        r = item.rejection
        try:
            code = RejectCode(r.code)
        except ValueError:
            raise MalformedMessage(f"rejection code {r.code!r} is not one this client knows") from None
        return StreamAnswer(int(item.request_id), rejection=Rejection(code, r.field, r.message))
    if not item.HasField("answer"):
        raise MalformedMessage("a StreamAnswer carries neither an answer nor a rejection")
    a = item.answer
    delivery = Delivery(
        _durable_from(a.durable), a.message, partition=a.partition, offset=a.offset, entry_id=a.entry_id
    )
    return StreamAnswer(int(item.request_id), delivery=delivery)


def decode_stream_response(data: bytes) -> list[StreamAnswer]:
    """The answers of a WriteStreamResponse."""
    return [_stream_answer_from(item) for item in _parse(_pb.WriteStreamResponse, data).answers]
