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
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from streams.api import messages
from streams.api.messages import MalformedMessage, StreamAnswer, WriteRequest
from streams.api.rejections import RejectCode, Rejection

log = logging.getLogger(__name__)

#: Answers in one response message at most (about 80 bytes each: far below any client's message size limit).
MAX_ANSWERS_PER_MESSAGE = 4096

#: Answers one entry: (request id, entry, the stream's authorization metadata, trace headers) -> its answer.
AnswerEntry = Callable[[int, WriteRequest, str | None, Mapping[str, str]], Awaitable[StreamAnswer]]


class EntryStream:
    """One WriteStream call on the server: reads entries, answers each as soon as it is settled."""

    def __init__(
        self,
        answer_entry: AnswerEntry,
        context: grpc.aio.ServicerContext[Any, Any],
        window: int,
        authorization: str | None,
        headers: Mapping[str, str],
        closing: Callable[[], bool],
    ) -> None:
        if window < 1:
            raise ValueError(f"a stream's window must be at least 1 entry, got {window}")
        self._answer_entry = answer_entry
        self._context = context
        self._window = asyncio.Semaphore(window)
        self._authorization = authorization
        self._headers = headers
        self._closing = closing
        self._answers: asyncio.Queue[bytes | None] = asyncio.Queue()
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
                for request_id, request in entries:
                    await window.acquire()  # a full window stops the reading here
                    self._start(request_id, request)
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
            self._answers.put_nowait(None)
            await sender
        finally:
            for task in (*self._tasks, sender):
                task.cancel()
        if malformed:
            await self._context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"the stream ended at a malformed message: {malformed}"
            )

    def _start(self, request_id: int, request: WriteRequest) -> None:
        if request_id in self._awaiting:
            message = f"request id {request_id} is already awaiting its answer on this stream; ids must be unique"
            self._reply(
                StreamAnswer(request_id, rejection=Rejection(RejectCode.INVALID_ARGUMENT, "request_id", message))
            )
            return
        if self._closing():
            message = "the server is shutting down; send the entry again on a new stream"
            self._reply(StreamAnswer(request_id, rejection=Rejection(RejectCode.UNAVAILABLE, "", message)))
            return
        self._awaiting.add(request_id)
        task = asyncio.create_task(self._answer(request_id, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request_id: int, request: WriteRequest) -> None:
        try:
            answer = await self._answer_entry(request_id, request, self._authorization, self._headers)
        finally:
            self._awaiting.discard(request_id)
        self._reply(answer)

    def _reply(self, answer: StreamAnswer) -> None:
        self._answers.put_nowait(messages.encode_stream_answer(answer))

    async def _send_answers(self) -> None:
        """The one task that writes answers (gRPC takes one write at a time). The answers settled while a write
        was under way go together in the next message; each answer frees its entry's slot once written."""
        answers, write, window = self._answers, self._context.write, self._window
        ended = False
        while not ended:
            first = await answers.get()
            if first is None:
                return
            ready = [first]
            while not answers.empty() and len(ready) < MAX_ANSWERS_PER_MESSAGE:
                data = answers.get_nowait()
                if data is None:
                    ended = True
                    break
                ready.append(data)
            await write(b"".join(ready))
            for _ in ready:
                window.release()
