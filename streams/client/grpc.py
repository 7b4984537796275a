"""Client helpers for the WalService (blocking and asyncio), with retries that keep one idempotency key."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import uuid
from collections.abc import Mapping, Sequence
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
    WriteRequest,
)
from streams.api.rejections import FIELD_METADATA
from streams.client.stream import STREAM_WINDOW, ApiError, AsyncStream, BlockingStream
from streams.model import Op
from streams.ports import Delivery, Durable

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: Status codes after which the very same request may be sent again (with its idempotency key).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


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
        self._stream = BlockingStream(self._channel, self._metadata, stream_window)

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
        self._stream = AsyncStream(self._channel, self._metadata, stream_window)

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
