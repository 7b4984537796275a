"""Client helpers for the WalService (blocking and asyncio), with retries that keep one idempotency key."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from streams.api import messages
from streams.api.messages import (
    BatchRequest,
    BatchResponse,
    BulkDeleteRequest,
    BulkDeleteResponse,
    LifecycleSpec,
    StreamAnswer,
    WriteRequest,
)
from streams.api.rejections import FIELD_METADATA, Rejection
from streams.model import Op
from streams.ports import Delivery, Durable

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: Status codes after which the very same request may be sent again (with its idempotency key).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class ApiError(Exception):
    """The server refused a call: ``code`` is the gRPC status, ``field`` the request field at fault ('' if none)."""

    def __init__(self, code: grpc.StatusCode, details: str, field: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field = field


@dataclass(frozen=True, slots=True)
class ClientTls:
    """PEM bytes: the CA that signed the server, and for mTLS this client's certificate chain and key."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None


def _error(exc: grpc.RpcError) -> ApiError:
    # Blocking calls give (key, value) named tuples, asyncio calls a Metadata object of pairs.
    trailing: Any = exc.trailing_metadata() or ()
    field = next((str(value) for key, value in trailing if key == FIELD_METADATA), "")
    return ApiError(exc.code(), exc.details() or "", field)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _payload_bytes(payload: bytes | Mapping[str, Any] | None) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def write_request(
    namespace: str,
    key: str,
    op: Op | str | int,
    payload: bytes | Mapping[str, Any] | None = None,
    *,
    targets: Sequence[str] = (),
    idempotency_key: str = "",
    sequence: int | None = None,
    delay_ms: int = 0,
    jitter_ms: int = 0,
    original_write_time_us: int | None = None,
) -> WriteRequest:
    """A WriteToLog request. A mapping payload is sent as compact JSON (for namespaces whose format is json).

    With an idempotency key the write time is stamped here, once, so every retry of the request is identical and
    lands with the same sequence even on another server replica.
    """
    if original_write_time_us is None:
        original_write_time_us = time.time_ns() // 1_000 if idempotency_key else 0
    return WriteRequest(
        namespace=namespace,
        key=key,
        op=messages.op_code(op),
        payload=_payload_bytes(payload),
        targets=tuple(targets),
        idempotency_key=idempotency_key,
        sequence=sequence,
        lifecycle=LifecycleSpec(original_write_time_us, delay_ms, jitter_ms),
    )


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


#: Entries a client keeps on one WriteStream awaiting their answers; ``submit`` waits while that many are out.
STREAM_WINDOW = 256


def _rejected(rejection: Rejection) -> ApiError:
    return ApiError(grpc.StatusCode[rejection.code.value], rejection.details(), rejection.field)


def _broken(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if isinstance(exc, grpc.RpcError) and callable(code) and callable(details):
        return code(), details() or ""
    return grpc.StatusCode.UNAVAILABLE, str(exc) or type(exc).__name__


def _lost(code: grpc.StatusCode, details: str) -> Delivery:
    """The answer of an entry that was sent on a stream that ended before answering it: it may be stored."""
    return Delivery(
        Durable.UNKNOWN,
        f"the stream ended ({code.name}: {details}) before this entry was answered; it may be stored: send it "
        "again with the same idempotency key",
    )


class _Outstanding:
    """The entries of one stream awaiting answers: id -> (settle with a Delivery, fail with an error, sent?)."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.waiting: dict[int, tuple[Callable[[Delivery], None], Callable[[ApiError], None]]] = {}
        self.sent: set[int] = set()

    def settle(self, answer: StreamAnswer) -> bool:
        """Hand an answer to its writer; False when no entry awaits it."""
        found = self.waiting.pop(answer.request_id, None)
        self.sent.discard(answer.request_id)
        if found is None:
            return False
        resolve, fail = found
        if answer.rejection is not None:
            fail(_rejected(answer.rejection))
        elif answer.delivery is not None:
            resolve(answer.delivery)
        return True

    def fail_all(self, exc: BaseException) -> int:
        """The stream ended: an entry already sent may be stored (UNKNOWN), one never sent is refused with the
        stream's status (an ApiError, retryable when the status is). Returns how many entries were waiting."""
        code, details = _broken(exc)
        waiting, sent = self.waiting, self.sent
        self.waiting, self.sent = {}, set()
        for request_id, (resolve, fail) in waiting.items():
            if request_id in sent:
                resolve(_lost(code, details))
            else:
                fail(ApiError(code, f"the stream ended before this entry was sent: {details}"))
        return len(waiting)


#: Entries a client puts in one WriteStream message at most (those submitted while the previous one was sent).
MAX_ENTRIES_PER_MESSAGE = 512


def _message_of(ready: list[tuple[int, bytes]], out: _Outstanding) -> bytes:
    """One WriteStreamRequest of the ready entries still awaited (each already encoded as a one-entry request;
    they concatenate), marking them sent."""
    parts = []
    for request_id, data in ready:
        if request_id in out.waiting:
            out.sent.add(request_id)
            parts.append(data)
    return b"".join(parts)


class _AsyncStream:
    """WriteStream on an asyncio channel: opened on the first entry, opened again after it ended."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], window: int) -> None:
        self._call_type: Any = channel.stream_stream(messages.WRITE_STREAM)
        self._metadata = metadata
        self._slots = asyncio.Semaphore(window)
        self._outbox: asyncio.Queue[tuple[int, bytes] | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._out = _Outstanding()

    async def submit(self, request: WriteRequest) -> asyncio.Future[Delivery]:
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()

        def resolve(delivery: Delivery) -> None:
            self._slots.release()
            if not future.done():
                future.set_result(delivery)

        def fail(error: ApiError) -> None:
            self._slots.release()
            if not future.done():
                future.set_exception(error)

        request_id = next(self._out.ids)
        self._out.waiting[request_id] = (resolve, fail)
        if self._outbox is None:
            self._open()
        assert self._outbox is not None
        self._outbox.put_nowait((request_id, messages.encode_stream_entry(request_id, request)))
        return future

    def _open(self) -> None:
        outbox: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._outbox = outbox
        out = self._out

        async def entries() -> AsyncIterator[bytes]:
            ended = False
            while not ended:
                item = await outbox.get()
                ready = []
                while item is not None:
                    ready.append(item)
                    if outbox.empty() or len(ready) >= MAX_ENTRIES_PER_MESSAGE:
                        break
                    item = outbox.get_nowait()
                ended = item is None
                message = _message_of(ready, out)
                if message:
                    yield message

        call = self._call_type(entries(), metadata=self._metadata)
        self._reader = asyncio.create_task(self._read(call, outbox))

    async def _read(self, call: Any, outbox: asyncio.Queue[tuple[int, bytes] | None]) -> None:
        ended: BaseException = ConnectionError("the stream ended")
        try:
            async for data in call:
                for answer in messages.decode_stream_response(data):
                    self._out.settle(answer)
            ended = ConnectionError("the server ended the stream")
        except grpc.aio.AioRpcError as exc:
            ended = exc
        except asyncio.CancelledError:
            call.cancel()
            ended = ConnectionError("the client closed the stream")
            raise
        except messages.MalformedMessage as exc:  # an answer that does not decode: the stream is not to be trusted
            call.cancel()
            ended = exc
        finally:
            if self._outbox is outbox:
                self._outbox = None
            outbox.put_nowait(None)
            self._out.fail_all(ended)

    async def close(self, timeout_s: float) -> None:
        """Half-close the stream and wait (up to ``timeout_s``) for the answers still due."""
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)
            except TimeoutError:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)


class _BlockingStream:
    """WriteStream on a blocking channel: a request iterator fed from a queue, a thread reading the answers."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], window: int) -> None:
        self._call_type: Any = channel.stream_stream(messages.WRITE_STREAM)
        self._metadata = metadata
        self._slots = threading.BoundedSemaphore(window)
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[tuple[int, bytes] | None] | None = None
        self._reader: threading.Thread | None = None
        self._out = _Outstanding()

    def submit(self, request: WriteRequest) -> concurrent.futures.Future[Delivery]:
        data_of = messages.encode_stream_entry
        self._slots.acquire()
        future: concurrent.futures.Future[Delivery] = concurrent.futures.Future()

        def resolve(delivery: Delivery) -> None:
            self._slots.release()
            if not future.done():
                future.set_result(delivery)

        def fail(error: ApiError) -> None:
            self._slots.release()
            if not future.done():
                future.set_exception(error)

        with self._lock:
            request_id = next(self._out.ids)
            self._out.waiting[request_id] = (resolve, fail)
            if self._outbox is None:
                self._open()
            assert self._outbox is not None
            self._outbox.put((request_id, data_of(request_id, request)))
        return future

    def _open(self) -> None:
        outbox: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._outbox = outbox
        out, lock = self._out, self._lock

        def entries() -> Iterator[bytes]:
            ended = False
            while not ended:
                item = outbox.get()
                ready = []
                while item is not None:
                    ready.append(item)
                    if len(ready) >= MAX_ENTRIES_PER_MESSAGE:
                        break
                    try:
                        item = outbox.get_nowait()
                    except queue.Empty:
                        break
                ended = item is None
                with lock:
                    message = _message_of(ready, out)
                if message:
                    yield message

        answers = self._call_type(entries(), metadata=self._metadata)
        self._reader = threading.Thread(
            target=self._read, args=(answers, outbox), name="walstream-write-stream", daemon=True
        )
        self._reader.start()

    def _read(self, answers: Any, outbox: queue.SimpleQueue[tuple[int, bytes] | None]) -> None:
        ended: BaseException = ConnectionError("the server ended the stream")
        try:
            for data in answers:
                ready = messages.decode_stream_response(data)
                with self._lock:
                    for answer in ready:
                        self._out.settle(answer)
        except grpc.RpcError as exc:
            ended = exc
        except messages.MalformedMessage as exc:  # an answer that does not decode: the stream is not to be trusted
            answers.cancel()
            ended = exc
        finally:
            with self._lock:
                if self._outbox is outbox:
                    self._outbox = None
                outbox.put(None)
                self._out.fail_all(ended)

    def close(self, timeout_s: float) -> None:
        with self._lock:
            outbox, reader = self._outbox, self._reader
        if outbox is not None:
            outbox.put(None)
        if reader is not None:
            reader.join(timeout_s)


class _Calls:
    """The three calls on one channel, as multi-callables over bytes."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        self.write: Any = channel.unary_unary(messages.WRITE_TO_LOG)
        self.batch: Any = channel.unary_unary(messages.WRITE_BATCH)
        self.bulk: Any = channel.unary_unary(messages.BULK_DELETE)
        self.health: Any = channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )


def _channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key, tls.certificate_chain)


class WalClient:
    """Blocking client. Refusals raise ApiError; Kafka outcomes come back as the response's ``durable``.

    ``write_to_log`` is one call per entry; ``submit`` sends entries over one WriteStream and returns a future per
    entry, which is how a high-rate producer keeps many writes in flight from one thread.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: ClientTls | None = None,
        timeout_s: float = 40.0,
        options: Sequence[tuple[str, Any]] = (),
        stream_window: int = STREAM_WINDOW,
    ) -> None:
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.secure_channel(target, _channel_credentials(tls), options=list(options))
        self._calls = _Calls(self._channel)
        self._metadata = _metadata(token)
        self.timeout_s = timeout_s
        self._stream = _BlockingStream(self._channel, self._metadata, stream_window)

    def submit(self, request: WriteRequest) -> concurrent.futures.Future[Delivery]:
        """Send one entry on the client's WriteStream; blocks only while ``stream_window`` entries await answers.
        The future gives the entry's Delivery, or raises ApiError when the server refused the entry (the field
        at fault is named); an entry sent on a stream that broke is answered UNKNOWN."""
        return self._stream.submit(request)

    def stream_write(self, request: WriteRequest, timeout_s: float | None = None) -> Delivery:
        """One entry through the WriteStream, waiting for its answer; UNKNOWN when none came in time."""
        future = self.submit(request)
        try:
            return future.result(timeout_s or self.timeout_s)
        except concurrent.futures.TimeoutError:
            return Delivery(Durable.UNKNOWN, "no answer in time; send the entry again with the same idempotency key")

    def __enter__(self) -> WalClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Half-close the WriteStream and wait for its answers still due, then close the channel."""
        self._stream.close(self.timeout_s)
        self._channel.close()

    def _invoke(self, call: Any, data: bytes, timeout_s: float | None) -> bytes:
        try:
            answer: bytes = call(data, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return answer

    def write_to_log(self, request: WriteRequest, timeout_s: float | None = None) -> Delivery:
        data = self._invoke(self._calls.write, messages.encode_write_request(request), timeout_s)
        return messages.decode_write_response(data)

    def write_batch(self, request: BatchRequest, timeout_s: float | None = None) -> BatchResponse:
        data = self._invoke(self._calls.batch, messages.encode_batch_request(request), timeout_s)
        return messages.decode_batch_response(data)

    def bulk_delete(self, request: BulkDeleteRequest, timeout_s: float | None = None) -> BulkDeleteResponse:
        data = self._invoke(self._calls.bulk, messages.encode_bulk_delete_request(request), timeout_s)
        return messages.decode_bulk_delete_response(data)

    def write(self, request: WriteRequest, *, attempts: int = 3, backoff_s: float = 0.2) -> Delivery:
        """WriteToLog, sent again while the answer is UNKNOWN or the server sheds load; needs an idempotency key
        when ``attempts`` > 1, so the retries have no second effect."""
        _check_retry(request, attempts)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self.write_to_log(request)
            except ApiError as exc:
                if exc.code not in RETRYABLE or last:
                    raise
            else:
                if response.durable is not Durable.UNKNOWN or last:
                    return response
            time.sleep(backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def health(self, service: str = "") -> str:
        """The server's serving status for ``service`` ('' is the whole server), by name, e.g. SERVING."""
        try:
            answer = self._calls.health(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


class AsyncWalClient:
    """The same client for asyncio code; one channel serves many concurrent calls, and ``submit`` many
    concurrent entries over one WriteStream."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: ClientTls | None = None,
        timeout_s: float = 40.0,
        options: Sequence[tuple[str, Any]] = (),
        stream_window: int = STREAM_WINDOW,
    ) -> None:
        if tls is None:
            self._channel = grpc.aio.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.aio.secure_channel(target, _channel_credentials(tls), options=list(options))
        self._calls = _Calls(self._channel)
        self._metadata = _metadata(token)
        self.timeout_s = timeout_s
        self._stream = _AsyncStream(self._channel, self._metadata, stream_window)

    async def submit(self, request: WriteRequest) -> asyncio.Future[Delivery]:
        """Send one entry on the client's WriteStream (waiting only while ``stream_window`` entries await
        answers) and return the future of its Delivery; the future raises ApiError when the server refused the
        entry, and an entry sent on a stream that broke is answered UNKNOWN."""
        return await self._stream.submit(request)

    async def stream_write(self, request: WriteRequest, timeout_s: float | None = None) -> Delivery:
        """One entry through the WriteStream, awaiting its answer; UNKNOWN when none came in time."""
        future = await self.submit(request)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s or self.timeout_s)
        except TimeoutError:
            return Delivery(Durable.UNKNOWN, "no answer in time; send the entry again with the same idempotency key")

    async def __aenter__(self) -> AsyncWalClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Half-close the WriteStream and wait for its answers still due, then close the channel."""
        await self._stream.close(self.timeout_s)
        await self._channel.close()

    async def _invoke(self, call: Any, data: bytes, timeout_s: float | None) -> bytes:
        try:
            answer: bytes = await call(data, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return answer

    async def write_to_log(self, request: WriteRequest, timeout_s: float | None = None) -> Delivery:
        data = await self._invoke(self._calls.write, messages.encode_write_request(request), timeout_s)
        return messages.decode_write_response(data)

    async def write_batch(self, request: BatchRequest, timeout_s: float | None = None) -> BatchResponse:
        data = await self._invoke(self._calls.batch, messages.encode_batch_request(request), timeout_s)
        return messages.decode_batch_response(data)

    async def bulk_delete(self, request: BulkDeleteRequest, timeout_s: float | None = None) -> BulkDeleteResponse:
        data = await self._invoke(self._calls.bulk, messages.encode_bulk_delete_request(request), timeout_s)
        return messages.decode_bulk_delete_response(data)

    async def health(self, service: str = "") -> str:
        try:
            answer = await self._calls.health(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def write(self, request: WriteRequest, *, attempts: int = 3, backoff_s: float = 0.2) -> Delivery:
        """Like WalClient.write, without blocking the event loop."""
        _check_retry(request, attempts)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self.write_to_log(request)
            except ApiError as exc:
                if exc.code not in RETRYABLE or last:
                    raise
            else:
                if response.durable is not Durable.UNKNOWN or last:
                    return response
            await asyncio.sleep(backoff_s * 2**attempt)
        raise AssertionError("unreachable")


def _check_retry(request: WriteRequest, attempts: int) -> None:
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    if attempts > 1 and not request.idempotency_key:
        raise ValueError("retrying a write needs an idempotency key, or a retry could write the entry twice")


def with_idempotency_key(request: WriteRequest, key: str | None = None) -> WriteRequest:
    """The request with an idempotency key (a fresh one by default) and its write time fixed now."""
    stamped = request.lifecycle.original_write_time_us or time.time_ns() // 1_000
    return replace(
        request,
        idempotency_key=key or new_idempotency_key(),
        lifecycle=replace(request.lifecycle, original_write_time_us=stamped),
    )


__all__ = [
    "ApiError",
    "AsyncWalClient",
    "ClientTls",
    "WalClient",
    "new_idempotency_key",
    "with_idempotency_key",
    "write_request",
]
