"""Connection backoff: exponential, jittered, capped, per key, forgotten on success."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.core.backoff import Backoff
from streams.worker.app import back_off_connects


def test_waits_double_up_to_the_cap_and_a_success_forgets() -> None:
    now = [0.0]
    backoff = Backoff(base_s=0.1, cap_s=1.0, clock=lambda: now[0], jitter=lambda: 1.0)
    assert backoff.ready("a")
    assert [backoff.failed("a") for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert not backoff.ready("a") and backoff.ready("b")  # per key
    now[0] = 1.0
    assert backoff.ready("a")
    backoff.succeeded("a")
    assert backoff.failed("a") == pytest.approx(0.1)


def test_jitter_spreads_waits_between_half_and_all_of_the_step() -> None:
    low = Backoff(base_s=1.0, cap_s=8.0, jitter=lambda: 0.0)
    assert low.failed("k") == pytest.approx(0.5)
    with pytest.raises(ValueError):
        Backoff(base_s=0.0)


def test_a_client_leaves_a_failing_broker_alone_until_its_backoff_passed() -> None:
    now = [0.0]
    attempts: list[Any] = []

    class Client:
        def __init__(self) -> None:
            self._conns: dict[Any, Any] = {}

        async def _get_conn(self, node_id: Any, **kwargs: Any) -> Any:
            attempts.append(node_id)
            return "conn" if now[0] >= 10 else None  # the broker is back at t = 10

    client = Client()
    back_off_connects(client, Backoff(base_s=1.0, cap_s=4.0, clock=lambda: now[0], jitter=lambda: 1.0))

    async def calls() -> list[Any]:
        got = []
        for t in [0.0, 0.1, 0.5, 1.0, 1.5, 3.0, 7.0, 10.0, 11.0, 11.1]:
            now[0] = t
            got.append(await client._get_conn(1, group=0))
        return got

    got = asyncio.run(calls())
    # Tried at 0 (wait 1), 1 (wait 2), 3 (wait 4, the cap), 7 (wait 4) and 11, held back in between (also at 10,
    # though the broker is back: the wait is not over); after the success, every call goes through.
    assert len(attempts) == 6
    assert got == [None] * 8 + ["conn", "conn"]
