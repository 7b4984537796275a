"""A bounded, expiring memory of idempotency keys, so a retried call has no second effect while it is remembered."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from streams.api.rejections import invalid

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the first call with a key fixed, and every retry reuses: its write time and its request fingerprint."""

    write_time_us: int
    fingerprint: str


class _Record(Generic[R]):
    __slots__ = ("attempt", "expires_at", "result")

    def __init__(self, attempt: Attempt, expires_at: float) -> None:
        self.attempt = attempt
        self.expires_at = expires_at
        self.result: asyncio.Future[R] | None = None


class IdempotencyCache(Generic[R]):
    """Key -> the attempt and the answer of the call that first used the key.

    * A retry whose first call was stored (``settled``) gets the remembered answer and writes nothing.
    * A retry while the first call is still running waits for it and gets its answer.
    * A retry after an answer that is not settled (UNKNOWN, FALSE) writes again, with the first call's write time,
      so the entry carries the same id and sequence and the workers treat it as a duplicate.
    * The same key with a different request is refused (INVALID_ARGUMENT on ``idempotency_key``).

    Memory is bounded by ``max_keys`` (oldest first out) and ``ttl_s``. It lives in this process only.
    """

    def __init__(
        self,
        ttl_s: float,
        max_keys: int,
        settled: Callable[[R], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_keys < 1:
            raise ValueError("ttl_s must be positive and max_keys at least 1")
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._settled = settled
        self._clock = clock
        self._records: OrderedDict[str, _Record[R]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def _expire(self, now: float) -> None:
        while self._records:
            key, record = next(iter(self._records.items()))
            if record.expires_at > now and len(self._records) <= self._max_keys:
                return
            del self._records[key]

    async def run(self, key: str, attempt: Attempt, call: Callable[[int], Awaitable[R]]) -> R:
        """Answer for ``key``: remembered, awaited from a running call, or from ``call(write_time_us)``.

        A call that raises leaves nothing behind, so the next one with the key starts afresh. A call that is
        cancelled (its caller went away) keeps the key's write time for the retry that will follow.
        """
        while True:
            now = self._clock()
            self._expire(now)
            record = self._records.get(key)
            if record is not None and record.attempt.fingerprint != attempt.fingerprint:
                raise invalid("idempotency_key", "was already used with a different request")
            if record is None or record.result is None:
                break
            running = record.result
            if running.done():
                if not running.cancelled() and self._settled(running.result()):
                    return running.result()
                break
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not running.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The call we waited for was cancelled, not us: take over.
        return await self._own(key, record, attempt, now, call)

    async def _own(
        self, key: str, record: _Record[R] | None, attempt: Attempt, now: float, call: Callable[[int], Awaitable[R]]
    ) -> R:
        if record is None:
            record = _Record(attempt, now + self._ttl_s)
            self._records[key] = record
            self._expire(now)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        record.result = future
        try:
            answer = await call(record.attempt.write_time_us)
        except Exception as exc:
            if self._records.get(key) is record:
                del self._records[key]
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, an unawaited future does not warn
            raise
        except BaseException:
            record.result = None
            future.cancel()
            raise
        future.set_result(answer)
        return answer
