"""The retry tiers' bookkeeping, pure: which partitions are held until when, and how far each may be committed."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from typing import Generic, TypeVar

TP = tuple[str, int]
T = TypeVar("T")


class TierBook(Generic[T]):
    """What a tier consumer must remember between polls; it never talks to Kafka itself.

    - **Held partitions.** A partition whose head is not due is paused until its due time (``hold``); it is
      handed back by ``resume_due`` once that time has come.
    - **Waiting items.** The last stretch of a delayed entry, shorter than the smallest tier, waits here in
      memory (``wait``), ordered by its exact due time, until ``release_due`` hands it out.
    - **Gap-aware commits.** Every offset handed out (``start``) is committed only once it is finished
      (``finish``) and every offset before it on its partition is finished too: ``commits`` gives, per
      partition, the first offset not finished yet (or one past the last finished), and only when it moved.
    """

    def __init__(self) -> None:
        self._held: dict[TP, int] = {}
        self._waiting: list[tuple[int, int, TP, T]] = []
        self._order = itertools.count()
        self._inflight: dict[TP, set[int]] = {}
        self._finished: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}

    # -- holding -----------------------------------------------------------------------------------------------------

    @property
    def held(self) -> dict[TP, int]:
        """Paused partitions and the time (ms) each is due to resume."""
        return dict(self._held)

    def is_held(self, tp: TP) -> bool:
        return tp in self._held

    def hold(self, tp: TP, until_ms: int) -> None:
        self._held[tp] = until_ms

    def resume_due(self, now_ms: float) -> list[TP]:
        """The held partitions whose time has come; they are held no longer."""
        due = [tp for tp, at in self._held.items() if at <= now_ms]
        for tp in due:
            del self._held[tp]
        return due

    # -- waiting in memory -------------------------------------------------------------------------------------------

    def wait(self, tp: TP, due_ms: int, item: T) -> None:
        """Keep ``item`` (already started on ``tp``) until ``due_ms``."""
        heapq.heappush(self._waiting, (due_ms, next(self._order), tp, item))

    def release_due(self, now_ms: float) -> list[T]:
        """The waiting items that are due, earliest first."""
        released = []
        while self._waiting and self._waiting[0][0] <= now_ms:
            released.append(heapq.heappop(self._waiting)[3])
        return released

    def wait_s(self, now_ms: float, longest_s: float = 1.0) -> float:
        """How long a poll may block before the next partition or item is due (at most ``longest_s``)."""
        wakeups = list(self._held.values()) + ([self._waiting[0][0]] if self._waiting else [])
        if not wakeups:
            return longest_s
        return min(max((min(wakeups) - now_ms) / 1000, 0.001), longest_s)

    # -- commits -----------------------------------------------------------------------------------------------------

    def start(self, tp: TP, offset: int) -> None:
        """``offset`` was handed out: no commit may pass it until it is finished."""
        self._inflight.setdefault(tp, set()).add(offset)

    def finish(self, tp: TP, offset: int) -> None:
        """The outcome of ``offset`` is durable."""
        self._inflight.get(tp, set()).discard(offset)
        self._finished[tp] = max(self._finished.get(tp, -1), offset)

    def commits(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """The position to commit per partition, for those of ``partitions`` whose position moved."""
        positions = {}
        for tp in set(partitions):
            if tp not in self._finished:
                continue
            pending = self._inflight.get(tp)
            position = min(pending) if pending else self._finished[tp] + 1
            if position > self._committed.get(tp, -1):
                positions[tp] = position
                self._committed[tp] = position
        return positions

    # -- rebalances --------------------------------------------------------------------------------------------------

    def revoke(self, partitions: Iterable[TP]) -> None:
        """Forget everything about partitions this consumer no longer owns; what was not committed is read again
        by their new owner."""
        revoked = set(partitions)
        for tp in revoked:
            self._held.pop(tp, None)
            self._inflight.pop(tp, None)
            self._finished.pop(tp, None)
            self._committed.pop(tp, None)
        self._waiting = [w for w in self._waiting if w[2] not in revoked]
        heapq.heapify(self._waiting)
