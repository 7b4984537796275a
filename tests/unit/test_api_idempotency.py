"""The idempotency cache: remembered answers, single flight, same write time on a retry, bounds and expiry."""

from __future__ import annotations

import asyncio

import pytest

from streams.api.idempotency import Attempt, IdempotencyCache
from streams.api.rejections import Rejected


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cache(clock: Clock | None = None, max_keys: int = 100, ttl_s: float = 60.0) -> IdempotencyCache[str]:
    return IdempotencyCache(ttl_s, max_keys, settled=lambda answer: answer.startswith("TRUE"), clock=clock or Clock())


class Writer:
    """Records every real write and answers from a script."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.write_times: list[int] = []

    async def __call__(self, write_time_us: int) -> str:
        self.write_times.append(write_time_us)
        await asyncio.sleep(0)
        return self.answers.pop(0)


def test_a_stored_answer_is_replayed_without_writing() -> None:
    async def scenario() -> None:
        cache, writer = _cache(), Writer("TRUE@1")
        assert await cache.run("k", Attempt(100, "f"), writer) == "TRUE@1"
        assert await cache.run("k", Attempt(999, "f"), writer) == "TRUE@1"
        assert writer.write_times == [100]

    asyncio.run(scenario())


def test_an_unknown_answer_is_retried_with_the_first_write_time() -> None:
    async def scenario() -> None:
        cache, writer = _cache(), Writer("UNKNOWN", "FALSE", "TRUE@2")
        assert await cache.run("k", Attempt(100, "f"), writer) == "UNKNOWN"
        assert await cache.run("k", Attempt(200, "f"), writer) == "FALSE"
        assert await cache.run("k", Attempt(300, "f"), writer) == "TRUE@2"
        assert await cache.run("k", Attempt(400, "f"), writer) == "TRUE@2"
        assert writer.write_times == [100, 100, 100]

    asyncio.run(scenario())


def test_a_different_request_with_the_same_key_is_refused() -> None:
    async def scenario() -> None:
        cache, writer = _cache(), Writer("TRUE")
        await cache.run("k", Attempt(1, "request-a"), writer)
        with pytest.raises(Rejected) as refused:
            await cache.run("k", Attempt(1, "request-b"), writer)
        assert refused.value.rejection.field == "idempotency_key"

    asyncio.run(scenario())


def test_concurrent_duplicates_share_one_write() -> None:
    async def scenario() -> None:
        cache = _cache()
        gate = asyncio.Event()
        writes: list[int] = []

        async def slow(write_time_us: int) -> str:
            writes.append(write_time_us)
            await gate.wait()
            return "TRUE@slow"

        tasks = [asyncio.create_task(cache.run("k", Attempt(i, "f"), slow)) for i in range(10)]
        await asyncio.sleep(0.01)
        gate.set()
        assert set(await asyncio.gather(*tasks)) == {"TRUE@slow"}
        assert writes == [0]

    asyncio.run(scenario())


def test_a_failed_call_leaves_nothing_behind() -> None:
    async def scenario() -> None:
        cache = _cache()

        async def boom(_t: int) -> str:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await cache.run("k", Attempt(1, "f"), boom)
        assert len(cache) == 0
        writer = Writer("TRUE")
        assert await cache.run("k", Attempt(2, "other"), writer) == "TRUE"
        assert writer.write_times == [2]

    asyncio.run(scenario())


def test_entries_expire_after_the_ttl() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache, writer = _cache(clock, ttl_s=10), Writer("TRUE@1", "TRUE@2")
        await cache.run("k", Attempt(1, "f"), writer)
        clock.now = 9.9
        assert await cache.run("k", Attempt(5, "f"), writer) == "TRUE@1"
        clock.now = 10.1
        assert await cache.run("k", Attempt(5, "f"), writer) == "TRUE@2"
        assert writer.write_times == [1, 5]

    asyncio.run(scenario())


def test_memory_is_bounded_oldest_first() -> None:
    async def scenario() -> None:
        cache = _cache(max_keys=3)
        writer = Writer(*[f"TRUE@{i}" for i in range(10)])
        for key in "abcd":
            await cache.run(key, Attempt(1, "f"), writer)
        assert len(cache) == 3
        assert await cache.run("d", Attempt(1, "f"), writer) == "TRUE@3"  # still remembered
        assert await cache.run("a", Attempt(1, "f"), writer) == "TRUE@4"  # forgotten: written again

    asyncio.run(scenario())


def test_bad_bounds() -> None:
    with pytest.raises(ValueError):
        IdempotencyCache(0, 10, settled=lambda _a: True)
    with pytest.raises(ValueError):
        IdempotencyCache(1, 0, settled=lambda _a: True)


def test_a_cancelled_call_keeps_the_write_time_and_its_waiters_take_over() -> None:
    async def scenario() -> None:
        cache = _cache()
        started = asyncio.Event()
        writes: list[int] = []

        async def hangs(write_time_us: int) -> str:
            writes.append(write_time_us)
            started.set()
            await asyncio.sleep(3600)
            return "never"

        owner = asyncio.create_task(cache.run("k", Attempt(100, "f"), hangs))
        await started.wait()
        waiter = asyncio.create_task(cache.run("k", Attempt(200, "f"), Writer("TRUE@waiter")))
        await asyncio.sleep(0.01)
        owner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await owner
        assert await waiter == "TRUE@waiter"
        assert writes == [100]
        assert await cache.run("k", Attempt(300, "f"), Writer("unused")) == "TRUE@waiter"

    asyncio.run(scenario())


def test_a_retry_after_a_cancelled_call_reuses_its_write_time() -> None:
    async def scenario() -> None:
        cache = _cache()

        async def hangs(_t: int) -> str:
            await asyncio.sleep(3600)
            return "never"

        owner = asyncio.create_task(cache.run("k", Attempt(100, "f"), hangs))
        await asyncio.sleep(0.01)
        owner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await owner
        writer = Writer("TRUE")
        assert await cache.run("k", Attempt(999, "f"), writer) == "TRUE"
        assert writer.write_times == [100]

    asyncio.run(scenario())
