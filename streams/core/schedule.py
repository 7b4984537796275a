"""The retry and delay policy: which tier an entry waits in, until when, and when it is given up (pure)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from streams.model import WalEntry
from streams.topics import tier_label


@dataclass(frozen=True, slots=True)
class Hop:
    """Wait in ``tier`` (its delay is ``tier_ms``) until ``due_ms``."""

    tier: str
    tier_ms: int
    due_ms: int


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Tiers in increasing order of delay (ms), the backoff multiplier and the attempt budget.

    Each tier topic stays first-in first-out by due time: an entry enters a tier with due = now + the tier's
    delay, so the head of a partition is always the first entry due and a consumer can hold the partition until
    then. The last stretch of a delayed entry, shorter than the smallest tier, enters the smallest tier due at
    once, and the consumer waits out the rest in memory; so no tier is ever out of order.
    """

    tiers_ms: tuple[int, ...]
    backoff_multiplier: float
    max_attempts: int

    def __post_init__(self) -> None:
        if not self.tiers_ms or list(self.tiers_ms) != sorted(set(self.tiers_ms)) or self.tiers_ms[0] <= 0:
            raise ValueError(f"tiers must be positive and strictly increasing, got {self.tiers_ms}")
        if self.backoff_multiplier < 1 or self.max_attempts < 1:
            raise ValueError("backoff_multiplier must be >= 1 and max_attempts >= 1")

    def backoff_ms(self, attempt: int) -> int:
        """The wanted delay after ``attempt`` failed attempts (1 = the first try failed)."""
        return int(self.tiers_ms[0] * self.backoff_multiplier ** max(attempt - 1, 0))

    def after_failure(self, attempt: int, now_ms: int) -> Hop | None:
        """Where an entry goes after its ``attempt``-th failed attempt, or None when the budget is spent."""
        if attempt >= self.max_attempts:
            return None
        wanted = self.backoff_ms(attempt)
        tier_ms = next((t for t in self.tiers_ms if t >= wanted), self.tiers_ms[-1])
        return Hop(tier_label(tier_ms), tier_ms, now_ms + tier_ms)

    def toward(self, due_ms: int, now_ms: int) -> Hop | None:
        """The next hop of a delayed entry due at ``due_ms``; None once it is due."""
        remaining = due_ms - now_ms
        if remaining <= 0:
            return None
        fitting = [t for t in self.tiers_ms if t <= remaining]
        if not fitting:
            smallest = self.tiers_ms[0]
            return Hop(tier_label(smallest), smallest, now_ms)
        tier_ms = fitting[-1]
        return Hop(tier_label(tier_ms), tier_ms, now_ms + tier_ms)


def jitter_ms(entry: WalEntry) -> int:
    """The entry's jitter, drawn once from its id so every worker, retry and replay agrees on it."""
    span = entry.lifecycle.jitter_ms
    if span <= 0:
        return 0
    digest = hashlib.blake2b(entry.entry_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (span + 1)


def due_ms(entry: WalEntry) -> int:
    """When a delayed entry may first be applied (ms since the epoch); 0 delay means at once."""
    if entry.lifecycle.delay_ms <= 0 and entry.lifecycle.jitter_ms <= 0:
        return 0
    return entry.lifecycle.original_write_time // 1000 + entry.lifecycle.delay_ms + jitter_ms(entry)


def queue_delay_s(due: int, now_ms: int, cap_s: int) -> int:
    """Whole seconds an SQS queue may hold a message due at ``due`` (ms) without releasing it early: the wait
    rounded down, at most ``cap_s`` (SQS allows 900). 0 when it is due."""
    if due <= now_ms:
        return 0
    return min((due - now_ms) // 1000, cap_s)
