"""WriteStream: many entries on one call, each validated, written and answered on its own, with flow control.

Flow control is a window of entries per stream: the server reads the next entry only while fewer than ``window``
entries of the stream are awaiting their answer or their answer is still being sent. An answer leaves the window
once gRPC has taken it, and gRPC only takes it while the client's HTTP/2 window has room, so a client that stops
reading its answers stops the server reading its entries, and then its own sends block. Nothing on either side
is buffered without limit. Entries also count against the process's in-flight limit, like WriteToLog calls: over
it, an entry is shed (answered RESOURCE_EXHAUSTED on its own) and the stream goes on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import grpc

from streams.api import messages
from streams.api.auth import Caller
from streams.api.messages import MalformedMessage, StreamAnswer, WriteRequest
from streams.api.rejections import RejectCode, Rejected, Rejection
from streams.api.shedding import InFlightLimiter
from streams.metrics import Metrics
from streams.model import WalEntry
from streams.ports import Delivery, Durable

log = logging.getLogger(__name__)

METHOD = "WriteStream"
_INTERNAL = "internal error; the server logged it; send the entry again with the same idempotency key"
#: Answers in one response message at most (about 80 bytes each: far below any client's message size limit).
MAX_ANSWERS_PER_MESSAGE = 4096

#: Where an answer goes as soon as it is known.
Reply = Callable[[StreamAnswer], None]
#: Answers the entries of one message: (entries with their ids, the stream's authorization metadata, trace
#: headers, reply); each entry's answer is passed to ``reply`` as soon as it is known, and the call returns once
#: every entry is answered.
AnswerEntries = Callable[
    [list[tuple[int, WriteRequest]], str | None, Mapping[str, str], Reply], Coroutine[Any, Any, None]
]


class EntryStream:
    """One WriteStream call on the server: reads entries, answers each as soon as it is settled."""

    def __init__(
        self,
        answer_entries: AnswerEntries,
        context: grpc.aio.ServicerContext[Any, Any],
        window: int,
        authorization: str | None,
        headers: Mapping[str, str],
        closing: Callable[[], bool],
    ) -> None:
        if window < 1:
            raise ValueError(f"a stream's window must be at least 1 entry, got {window}")
        self._answer_entries = answer_entries
        self._context = context
        self._window = asyncio.Semaphore(window)
        self._authorization = authorization
        self._headers = headers
        self._closing = closing
        self._ready: collections.deque[StreamAnswer] = collections.deque()
        self._wake = asyncio.Event()
        self._finished = False
        self._awaiting: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, requests: AsyncIterator[bytes]) -> None:
        """Serve the stream until the client half-closes it (then every entry read is answered first), or a
        message that is not a WriteStreamRequest at all arrives (then the others are answered, and the call ends
        with INVALID_ARGUMENT)."""
        sender = asyncio.create_task(self._send_answers())
        malformed = ""
        window = self._window
        try:
            async for data in requests:
                try:
                    entries = messages.decode_stream_request(data)
                except MalformedMessage as exc:
                    malformed = str(exc)
                    break
                accepted: list[tuple[int, WriteRequest]] = []
                for request_id, request in entries:
                    if window.locked() and accepted:
                        # The message holds more than the window has room for: what is accepted goes now, and
                        # its answers make the room for the rest.
                        self._start(accepted)
                        accepted = []
                    await window.acquire()  # a full window stops the reading here
                    if self._admit(request_id):
                        accepted.append((request_id, request))
                if accepted:
                    self._start(accepted)
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
            self._finished = True
            self._wake.set()
            await sender
        finally:
            for task in (*self._tasks, sender):
                task.cancel()
        if malformed:
            await self._context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"the stream ended at a malformed message: {malformed}"
            )

    def _admit(self, request_id: int) -> bool:
        """Whether an entry goes on to be written; if not, it is answered here."""
        if request_id in self._awaiting:
            message = f"request id {request_id} is already awaiting its answer on this stream; ids must be unique"
            rejection = Rejection(RejectCode.INVALID_ARGUMENT, "request_id", message)
            self._reply(StreamAnswer(request_id, rejection=rejection))
            return False
        if self._closing():
            message = "the server is shutting down; send the entry again on a new stream"
            self._reply(StreamAnswer(request_id, rejection=Rejection(RejectCode.UNAVAILABLE, "", message)))
            return False
        self._awaiting.add(request_id)
        return True

    def _start(self, entries: list[tuple[int, WriteRequest]]) -> None:
        task = asyncio.create_task(self._answer_entries(entries, self._authorization, self._headers, self._settled))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settled(self, answer: StreamAnswer) -> None:
        self._awaiting.discard(answer.request_id)
        self._reply(answer)

    def _reply(self, answer: StreamAnswer) -> None:
        self._ready.append(answer)
        self._wake.set()

    async def _send_answers(self) -> None:
        """The one task that writes answers (gRPC takes one write at a time). The answers settled while a write
        was under way go together in the next message; each answer frees its entry's slot once written."""
        ready, wake, write, window = self._ready, self._wake, self._context.write, self._window
        while True:
            await wake.wait()
            wake.clear()
            while ready:
                count = min(len(ready), MAX_ANSWERS_PER_MESSAGE)
                batch = [ready.popleft() for _ in range(count)]
                await write(messages.encode_stream_answers(batch))
                for _ in batch:
                    window.release()
            if self._finished:
                return


class StreamWrites:
    """How the service answers the entries of one WriteStream message: each with everything a WriteToLog call
    gets (the in-flight limit, the token, validation, authorization, the idempotency key), refusals answered at
    once and alone. Entries without an idempotency key are written together, one producer answer for the lot
    (so the message's entries are answered when the last of them is acknowledged); an entry with a key goes
    through the idempotency cache on its own, exactly as a WriteToLog call."""

    def __init__(
        self,
        limiter: InFlightLimiter,
        metrics: Metrics,
        identify: Callable[[str | None], Caller],
        plain_entry: Callable[[WriteRequest, Caller, Mapping[str, str]], WalEntry],
        write_keyed: Callable[[WriteRequest, Caller, Mapping[str, str]], Awaitable[Delivery]],
        write_many: Callable[[Sequence[WalEntry]], Awaitable[list[Delivery]]],
        hold: Callable[[], Awaitable[None]],
        ack_timeout_s: float,
    ) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._identify = identify
        self._plain_entry = plain_entry
        self._write_keyed = write_keyed
        self._write_many = write_many
        self._hold = hold
        self._ack_timeout_s = ack_timeout_s

    def _answered(self, code: str, started: float) -> None:
        metrics = self._metrics
        metrics.child(metrics.api_calls, METHOD, code).inc()
        metrics.child(metrics.api_latency, METHOD).observe(time.perf_counter() - started)

    def _done(self, count: int = 1) -> None:
        for _ in range(count):
            self._limiter.release()
        self._metrics.api_in_flight.dec(count)

    async def answer(
        self,
        entries: list[tuple[int, WriteRequest]],
        authorization: str | None,
        headers: Mapping[str, str],
        reply: Reply,
    ) -> None:
        started = time.perf_counter()
        metrics, limiter = self._metrics, self._limiter
        try:
            caller = self._identify(authorization)  # per message, so a revoked token stops the stream's writes
        except Rejected as exc:
            for request_id, _ in entries:
                self._answered(exc.rejection.code.value, started)
                reply(StreamAnswer(request_id, rejection=exc.rejection))
            return
        together: list[tuple[int, WalEntry]] = []
        alone: list[Awaitable[None]] = []
        for request_id, request in entries:
            if not limiter.try_acquire():
                metrics.child(metrics.api_shed, METHOD).inc()
                self._answered("RESOURCE_EXHAUSTED", started)
                message = f"{limiter.limit} calls and stream entries are in flight, the server's limit; retry later"
                reply(StreamAnswer(request_id, rejection=Rejection(RejectCode.RESOURCE_EXHAUSTED, "", message)))
                continue
            metrics.api_in_flight.inc()
            if request.idempotency_key:
                alone.append(self._keyed(request_id, request, caller, headers, started, reply))
                continue
            try:
                together.append((request_id, self._plain_entry(request, caller, headers)))
            except Rejected as exc:
                self._done()
                self._answered(exc.rejection.code.value, started)
                reply(StreamAnswer(request_id, rejection=exc.rejection))
            except Exception:
                log.exception("internal error preparing a WriteStream entry")
                self._done()
                self._answered("INTERNAL", started)
                reply(StreamAnswer(request_id, delivery=Delivery(Durable.UNKNOWN, _INTERNAL)))
        if together:
            alone.append(self._together(together, started, reply))
        await asyncio.gather(*alone)

    async def _together(self, written: list[tuple[int, WalEntry]], started: float, reply: Reply) -> None:
        entries = [entry for _, entry in written]
        try:
            await self._hold()
            async with asyncio.timeout(self._ack_timeout_s):
                deliveries = await self._write_many(entries)
        except TimeoutError:
            message = f"no acknowledgement from Kafka within {self._ack_timeout_s:g}s; it may be stored"
            deliveries = [Delivery(Durable.UNKNOWN, message, entry_id=e.entry_id) for e in entries]
        except Exception:
            log.exception("internal error writing WriteStream entries")
            deliveries = [Delivery(Durable.UNKNOWN, _INTERNAL, entry_id=e.entry_id) for e in entries]
        finally:
            self._done(len(written))
        for (request_id, _), delivery in zip(written, deliveries, strict=True):
            self._answered("OK", started)
            reply(StreamAnswer(request_id, delivery=delivery))

    async def _keyed(
        self,
        request_id: int,
        request: WriteRequest,
        caller: Caller,
        headers: Mapping[str, str],
        started: float,
        reply: Reply,
    ) -> None:
        code = "OK"
        try:
            answer = StreamAnswer(request_id, delivery=await self._write_keyed(request, caller, headers))
        except Rejected as exc:
            code = exc.rejection.code.value
            answer = StreamAnswer(request_id, rejection=exc.rejection)
        except Exception:
            log.exception("internal error writing a WriteStream entry")
            code = "INTERNAL"
            answer = StreamAnswer(request_id, delivery=Delivery(Durable.UNKNOWN, _INTERNAL))
        finally:
            self._done()
        self._answered(code, started)
        reply(answer)
