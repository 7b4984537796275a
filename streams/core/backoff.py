"""Exponential backoff with jitter, per key: how long to leave a failing connection alone."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable


class Backoff:
    """After ``n`` failures in a row for a key, the next attempt waits ``min(cap_s, base_s * 2**(n-1))`` times a
    random factor in [0.5, 1] (so many clients do not retry in step). A success forgets the key."""

    def __init__(
        self,
        base_s: float = 0.1,
        cap_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        self._base = base_s
        self._cap = cap_s
        self._clock = clock
        self._jitter = jitter
        self._failures: dict[Hashable, int] = {}
        self._next: dict[Hashable, float] = {}

    def ready(self, key: Hashable) -> bool:
        """Whether an attempt for ``key`` may be made now."""
        return self._clock() >= self._next.get(key, 0.0)

    def failed(self, key: Hashable) -> float:
        """An attempt failed; returns the wait before the next one."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        wait: float = min(self._cap, self._base * float(2 ** (n - 1))) * (0.5 + 0.5 * self._jitter())
        self._next[key] = self._clock() + wait
        return wait

    def succeeded(self, key: Hashable) -> None:
        self._failures.pop(key, None)
        self._next.pop(key, None)
