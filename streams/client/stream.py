"""WriteStream on the client's side: entries submitted one by one go out together, each answer settles its own
future, and the window bounds the entries awaiting answers (``submit`` waits while it is full)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from streams.api import messages
from streams.api.messages import StreamAnswer, WriteRequest
from streams.api.rejections import Rejection
from streams.ports import Delivery, Durable


class ApiError(Exception):
    """The server refused a call: ``code`` is the gRPC status, ``field`` the request field at fault ('' if none)."""

    def __init__(self, code: grpc.StatusCode, details: str, field: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field = field


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


AnyFuture = asyncio.Future[Delivery] | concurrent.futures.Future[Delivery]


class Outstanding:
    """The entries of one stream awaiting answers: id -> (settle with a Delivery, fail with an error, sent?)."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.waiting: dict[int, tuple[Callable[[Delivery], None], Callable[[ApiError], None]]] = {}
        self.sent: set[int] = set()

    def add(self, future: AnyFuture, release: Callable[[], None]) -> int:
        """Await an answer for ``future`` under a new request id; ``release`` frees the entry's slot in the window
        once it is answered (or given up)."""

        def resolve(delivery: Delivery) -> None:
            release()
            if not future.done():
                future.set_result(delivery)

        def fail(error: ApiError) -> None:
            release()
            if not future.done():
                future.set_exception(error)

        request_id = next(self.ids)
        self.waiting[request_id] = (resolve, fail)
        return request_id

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


def message_of(ready: list[tuple[int, bytes]], out: Outstanding) -> bytes:
    """One WriteStreamRequest of the ready entries still awaited (each already encoded as a one-entry request;
    they concatenate), marking them sent."""
    parts = []
    for request_id, data in ready:
        if request_id in out.waiting:
            out.sent.add(request_id)
            parts.append(data)
    return b"".join(parts)


class AsyncStream:
    """WriteStream on an asyncio channel: opened on the first entry, opened again after it ended."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], window: int) -> None:
        self._call_type: Any = channel.stream_stream(messages.WRITE_STREAM)
        self._metadata = metadata
        self._slots = asyncio.Semaphore(window)
        self._outbox: asyncio.Queue[tuple[int, bytes] | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._out = Outstanding()

    async def submit(self, request: WriteRequest) -> asyncio.Future[Delivery]:
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()
        request_id = self._out.add(future, self._slots.release)
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
                message = message_of(ready, out)
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


class BlockingStream:
    """WriteStream on a blocking channel: a request iterator fed from a queue, a thread reading the answers."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], window: int) -> None:
        self._call_type: Any = channel.stream_stream(messages.WRITE_STREAM)
        self._metadata = metadata
        self._slots = threading.BoundedSemaphore(window)
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[tuple[int, bytes] | None] | None = None
        self._reader: threading.Thread | None = None
        self._out = Outstanding()

    def submit(self, request: WriteRequest) -> concurrent.futures.Future[Delivery]:
        data_of = messages.encode_stream_entry
        self._slots.acquire()
        future: concurrent.futures.Future[Delivery] = concurrent.futures.Future()
        with self._lock:
            request_id = self._out.add(future, self._slots.release)
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
                    message = message_of(ready, out)
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
