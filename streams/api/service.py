"""The WalService calls: authenticate, validate, de-duplicate, then write entries to Kafka and answer durably."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import grpc

from streams.api import messages
from streams.api.auth import Caller, Grant, Identifies, TokenRegistry, authorize
from streams.api.idempotency import Attempt, IdempotencyCache
from streams.api.messages import (
    BatchRequest,
    BatchResponse,
    BulkDeleteRequest,
    BulkDeleteResponse,
    EntryAck,
    MalformedMessage,
    WriteRequest,
    op_of,
)
from streams.api.rejections import FIELD_METADATA, RejectCode, Rejected, Rejection, invalid
from streams.api.shedding import InFlightLimiter
from streams.api.stream import EntryStream, StreamWrites
from streams.api.validation import (
    Limits,
    RequestValidator,
    ValidWrite,
    build_entry,
    bulk_delete_entries,
    derive_id,
)
from streams.metrics import Metrics
from streams.model import BatchInfo, Op, WalEntry, new_entry_id
from streams.namespaces import Namespace
from streams.ports import Delivery, Durable

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[bytes, bytes]

STREAM = "WriteStream"
#: Call metadata copied into each entry's headers, so traces continue through the log.
TRACE_METADATA = ("traceparent", "tracestate")


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    max_in_flight: int = 256
    #: How long a call waits for Kafka's acknowledgement before answering UNKNOWN.
    ack_timeout_s: float = 35.0
    idempotency_ttl_s: float = 600.0
    idempotency_max_keys: int = 100_000
    limits: Limits = field(default_factory=Limits)
    #: WriteStream: entries of one stream read but not answered yet (answers not yet taken by gRPC included).
    stream_window: int = 128


#: Called after each entry of a batch is handed to the producer, with its index; raising aborts the batch.
BatchFault = Callable[[int], None]


class EntryWriter(Protocol):
    """Writes entries to their namespace's log and answers durably (the SDK's WalWriter)."""

    async def write_entry(self, entry: WalEntry) -> Delivery: ...

    async def write_many(self, entries: Sequence[WalEntry]) -> list[Delivery]: ...


class BatchWriter(Protocol):
    """Writes entries atomically, all or none (the SDK's AtomicWalWriter): the batch's answer and, when it is
    TRUE, where each entry landed."""

    async def write_batch(
        self, entries: Sequence[WalEntry], fault: BatchFault | None = None
    ) -> tuple[Delivery, tuple[Delivery, ...]]: ...


def _now_us() -> int:
    return time.time_ns() // 1_000


def _fingerprint(request: Any) -> str:
    """Identifies a request's content apart from its idempotency key (the dataclass repr is deterministic)."""
    return hashlib.sha256(repr(replace(request, idempotency_key="")).encode()).hexdigest()


def _settled(response: Delivery | BatchResponse | BulkDeleteResponse) -> bool:
    return response.durable is Durable.TRUE


class WalService:
    """Handles the three calls on raw bytes, so even an undecodable request gets a proper status code."""

    def __init__(
        self,
        namespaces: Mapping[str, Namespace],
        writer: EntryWriter,
        batches: BatchWriter,
        tokens: Identifies | None = None,
        options: ServiceOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.options = options or ServiceOptions()
        self.metrics = metrics or Metrics()
        self._validator = RequestValidator(namespaces, self.options.limits)
        self._writer = writer
        self._batches = batches
        self._tokens: Identifies = tokens or TokenRegistry()
        self.limiter = InFlightLimiter(self.options.max_in_flight)
        ttl, size = self.options.idempotency_ttl_s, self.options.idempotency_max_keys
        self._writes: IdempotencyCache[Delivery] = IdempotencyCache(ttl, size, _settled)
        self._batch_answers: IdempotencyCache[BatchResponse] = IdempotencyCache(ttl, size, _settled)
        self._bulk_answers: IdempotencyCache[BulkDeleteResponse] = IdempotencyCache(ttl, size, _settled)
        # Test hooks, set on the object only (never reachable from the network):
        #: awaited by each accepted call right before it writes (lets a test hold calls in flight);
        self.before_write: Callable[[], Awaitable[None]] | None = None
        #: called after each entry of a batch is produced; raising aborts the transaction.
        self.batch_fault: BatchFault | None = None
        #: Set by ``begin_shutdown``.
        self.closing = False
        self._stream_writes = StreamWrites(
            self.limiter,
            self.metrics,
            self._tokens.identify,
            self._plain_entry,
            self._write_to_log,
            writer.write_many,
            self._hold,
            self.options.ack_timeout_s,
        )

    # -- gRPC plumbing -----------------------------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a server: requests and responses stay bytes until the calls decode them."""
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "WriteToLog": grpc.unary_unary_rpc_method_handler(self.write_to_log),
            "WriteBatch": grpc.unary_unary_rpc_method_handler(self.write_batch),
            "BulkDelete": grpc.unary_unary_rpc_method_handler(self.bulk_delete),
            "WriteStream": grpc.stream_stream_rpc_method_handler(self.write_stream),
        }
        return grpc.method_handlers_generic_handler(messages.SERVICE_NAME, methods)

    async def write_to_log(self, data: bytes, context: Context) -> bytes:
        return await self._call(
            "WriteToLog", data, context, messages.decode_write_request, self._write_to_log,
            messages.encode_write_response,
        )  # fmt: skip

    async def write_batch(self, data: bytes, context: Context) -> bytes:
        return await self._call(
            "WriteBatch", data, context, messages.decode_batch_request, self._write_batch,
            messages.encode_batch_response,
        )  # fmt: skip

    async def bulk_delete(self, data: bytes, context: Context) -> bytes:
        return await self._call(
            "BulkDelete", data, context, messages.decode_bulk_delete_request, self._bulk_delete,
            messages.encode_bulk_delete_response,
        )  # fmt: skip

    async def write_stream(self, requests: AsyncIterator[bytes], context: Context) -> None:
        metadata = _metadata(context)
        headers = {name: metadata[name] for name in TRACE_METADATA if name in metadata}
        stream = EntryStream(
            self._stream_writes.answer,
            context,
            self.options.stream_window,
            metadata.get("authorization"),
            headers,
            lambda: self.closing,
        )
        await stream.run(requests)

    def begin_shutdown(self) -> None:
        """From now on, entries arriving on open streams are answered UNAVAILABLE (never written), so their
        clients send them again elsewhere while the entries already accepted are answered."""
        self.closing = True

    def _answered(self, method: str, code: str, started: float) -> None:
        metrics = self.metrics
        metrics.child(metrics.api_calls, method, code).inc()
        metrics.child(metrics.api_latency, method).observe(time.perf_counter() - started)

    async def _call(
        self,
        method: str,
        data: bytes,
        context: Context,
        decode: Callable[[bytes], Req],
        handle: Callable[[Req, Caller, Mapping[str, str]], Awaitable[Resp]],
        encode: Callable[[Resp], bytes],
    ) -> bytes:
        started = time.perf_counter()
        metrics = self.metrics
        if not self.limiter.try_acquire():
            metrics.child(metrics.api_shed, method).inc()
            self._answered(method, "RESOURCE_EXHAUSTED", started)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.limiter.limit} calls are in flight, the server's limit; retry with backoff",
            )
        metrics.api_in_flight.inc()
        rejection: Rejection | None = None
        try:
            metadata = _metadata(context)
            try:
                request = decode(data)
            except MalformedMessage as exc:
                raise invalid("", str(exc)) from None
            caller = self._tokens.identify(metadata.get("authorization"))
            headers = {name: metadata[name] for name in TRACE_METADATA if name in metadata}
            answer = encode(await handle(request, caller, headers))
            self._answered(method, "OK", started)
            return answer
        except Rejected as exc:
            rejection = exc.rejection
        except Exception:
            log.exception("internal error in a WalService call")
        finally:
            self.limiter.release()
            metrics.api_in_flight.dec()
        self._answered(method, "INTERNAL" if rejection is None else rejection.code.value, started)
        if rejection is None:
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server logged it")
        await context.abort(
            grpc.StatusCode[rejection.code.value], rejection.details(), ((FIELD_METADATA, rejection.field),)
        )

    async def _hold(self) -> None:
        if self.before_write is not None:
            await self.before_write()

    def _scope(self, rpc: str, ns: Namespace, caller: Caller, idempotency_key: str) -> str:
        """The idempotency scope: a key is private to its call type, namespace and producer identity."""
        return "\x1f".join((rpc, ns.name, caller.identity or "", idempotency_key))

    # -- WriteToLog --------------------------------------------------------------------------------------------------

    def _checked(self, request: WriteRequest, caller: Caller) -> tuple[Namespace, ValidWrite, int]:
        """The request's namespace, the request validated, and now (µs): what WriteToLog checks before writing."""
        ns = self._validator.namespace(request.namespace)
        authorize(ns, caller, Grant.DELETE if op_of(request.op) is Op.DELETE else Grant.WRITE)
        now = _now_us()
        return ns, self._validator.write(ns, request, now), now

    def _plain_entry(self, request: WriteRequest, caller: Caller, headers: Mapping[str, str]) -> WalEntry:
        """The entry of a WriteToLog request without an idempotency key, checked as the call checks it."""
        ns, valid, now = self._checked(request, caller)
        return build_entry(
            ns.name, valid, entry_id=new_entry_id(), write_time_us=valid.write_time_us or now, idempotency_key="",
            headers=headers,
        )  # fmt: skip

    async def _write_to_log(self, request: WriteRequest, caller: Caller, headers: Mapping[str, str]) -> Delivery:
        key = request.idempotency_key
        if not key:
            entry = self._plain_entry(request, caller, headers)
            await self._hold()
            return await self._write_one(entry)
        ns, valid, now = self._checked(request, caller)
        scope = self._scope("WriteToLog", ns, caller, key)

        async def attempt(write_time_us: int) -> Delivery:
            entry = build_entry(
                ns.name, valid, entry_id=derive_id(scope), write_time_us=write_time_us, idempotency_key=key,
                headers=headers,
            )  # fmt: skip
            await self._hold()
            return await self._write_one(entry)

        write_time = valid.write_time_us or now
        return await self._writes.run(scope, Attempt(write_time, _fingerprint(request)), attempt)

    async def _write_one(self, entry: WalEntry) -> Delivery:
        try:
            async with asyncio.timeout(self.options.ack_timeout_s):  # no extra task per call, unlike wait_for
                result = await self._writer.write_entry(entry)
        except TimeoutError:
            return Delivery(
                Durable.UNKNOWN,
                f"no acknowledgement from Kafka within {self.options.ack_timeout_s:g}s; retry with the same "
                "idempotency key",
                entry_id=entry.entry_id,
            )
        return result

    # -- WriteBatch --------------------------------------------------------------------------------------------------

    async def _write_batch(self, request: BatchRequest, caller: Caller, headers: Mapping[str, str]) -> BatchResponse:
        ns = self._validator.namespace(request.namespace)
        if ns.backend == "sqs":
            raise Rejected(
                Rejection(
                    RejectCode.FAILED_PRECONDITION,
                    "namespace",
                    f"namespace {ns.name!r} uses backend sqs, which has no transactions: WriteBatch is all or "
                    "nothing only on a Kafka log. Write its entries with WriteToLog or WriteStream instead.",
                )
            )
        deletes = [op_of(spec.op) is Op.DELETE for spec in request.entries]
        if not deletes or not all(deletes):
            authorize(ns, caller, Grant.WRITE)
        if any(deletes):
            authorize(ns, caller, Grant.DELETE)
        now = _now_us()
        write_time, valid = self._validator.batch(ns, request, now)
        key = request.idempotency_key
        scope = self._scope("WriteBatch", ns, caller, key) if key else ""
        batch_id = derive_id(scope) if key else new_entry_id()

        async def attempt(write_time_us: int) -> BatchResponse:
            count = len(valid)
            entries = [
                build_entry(
                    ns.name,
                    write,
                    entry_id=derive_id(batch_id, str(index)),
                    write_time_us=write_time_us,
                    sequence=write_time_us + index,  # applied in request order
                    idempotency_key=key,
                    batch=BatchInfo(batch_id, index, count),
                    headers=headers,
                )
                for index, write in enumerate(valid)
            ]
            await self._hold()
            verdict, placed = await self._batches.write_batch(entries, self.batch_fault)
            acks = tuple(EntryAck.of(p) for p in placed)
            return BatchResponse(verdict.durable, verdict.message, batch_id, acks)

        chosen = write_time or now
        if not key:
            return await attempt(chosen)
        return await self._batch_answers.run(scope, Attempt(chosen, _fingerprint(request)), attempt)

    # -- BulkDelete --------------------------------------------------------------------------------------------------

    async def _bulk_delete(
        self, request: BulkDeleteRequest, caller: Caller, headers: Mapping[str, str]
    ) -> BulkDeleteResponse:
        ns = self._validator.namespace(request.namespace)
        authorize(ns, caller, Grant.DELETE)
        now = _now_us()
        valid = self._validator.bulk_delete(ns, request, now)
        key = request.idempotency_key
        scope = self._scope("BulkDelete", ns, caller, key) if key else new_entry_id()

        async def attempt(write_time_us: int) -> BulkDeleteResponse:
            entries = bulk_delete_entries(
                ns.name, valid, scope=scope, write_time_us=write_time_us, idempotency_key=key or None, headers=headers
            )
            await self._hold()
            answers = await asyncio.gather(*(self._write_one(entry) for entry in entries))
            stored = sum(1 for a in answers if a.durable is Durable.TRUE)
            acks = tuple(EntryAck.of(a) for a in answers)
            if stored == len(answers):
                return BulkDeleteResponse(Durable.TRUE, "", acks, stored)
            first_problem = next(a.message for a in answers if a.durable is not Durable.TRUE)
            if stored == 0 and all(a.durable is Durable.FALSE for a in answers):
                return BulkDeleteResponse(Durable.FALSE, first_problem, acks, 0)
            return BulkDeleteResponse(
                Durable.UNKNOWN,
                f"{stored} of {len(answers)} deletes are stored; retry with the same idempotency key "
                f"(first problem: {first_problem})",
                acks,
                stored,
            )

        chosen = valid.write_time_us or now
        if not key:
            return await attempt(chosen)
        return await self._bulk_answers.run(scope, Attempt(chosen, _fingerprint(request)), attempt)


def _metadata(context: Context) -> dict[str, str]:
    """Text call metadata by lower-case name; the first value wins when a name repeats."""
    found: dict[str, str] = {}
    for item in context.invocation_metadata() or ():
        name, value = item
        if isinstance(value, str) and name.lower() not in found:
            found[name.lower()] = value
    return found
