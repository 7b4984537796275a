"""The small protocols the core depends on; each external system implements them in its own package."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from streams.model import Op

__all__ = ["Op", "Outcome", "Sink", "SinkWrite", "WriteResult"]


@dataclass(frozen=True, slots=True)
class SinkWrite:
    """One versioned change for one target: the row/document ``key`` at version ``sequence``."""

    key: str
    op: Op
    sequence: int
    document: Mapping[str, Any] | None  # the decoded payload; None for a delete
    raw: bytes = b""  # the payload as written (what a plain topic target delivers)


class Outcome(StrEnum):
    APPLIED = "applied"  # the target now holds this version
    STALE = "stale"  # the target already held a newer version: nothing to do, counts as success
    RETRYABLE = "retryable"  # timeouts, unavailability, overload: try again later
    FATAL = "fatal"  # the write can never succeed as it is (mapping, validation, other 4xx)

    @property
    def ok(self) -> bool:
        return self in (Outcome.APPLIED, Outcome.STALE)


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: Outcome
    error: str = ""


class Sink(Protocol):
    """A versioned, idempotent target. Delivery guarantee: a write of version v never replaces a newer version,
    so replays, duplicates and out-of-order writes all converge to the newest version."""

    name: str

    async def ensure_schema(self) -> None:
        """Create the keyspace/table/index if missing (idempotent)."""

    async def write(self, writes: Sequence[SinkWrite]) -> list[WriteResult]:
        """Apply a batch; one result per write, in order. Never raises for a per-write failure."""

    async def close(self) -> None: ...
