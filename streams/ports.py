"""The contracts between walstream's core and the systems it talks to: sinks, the producer, the state table.

The core (``streams.core``, ``streams.pipeline``) depends on these protocols only; ``connectors/`` implements them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from streams.model import Op

# -- the durable answer ------------------------------------------------------------------------------------------------


class Durable(StrEnum):
    """Whether a record is in the log: the three-valued answer every write gets."""

    TRUE = "TRUE"  # stored with acks=all
    FALSE = "FALSE"  # definitely not stored; the message says why
    UNKNOWN = "UNKNOWN"  # a timeout: it may or may not be stored; retry with the same idempotency key


@dataclass(frozen=True, slots=True)
class Delivery:
    """The durable answer for one record: the producer gives it, the SDK returns it, and the API's
    ``WriteResponse`` is its wire form. ``entry_id`` is set where the record is a WAL entry."""

    durable: Durable
    message: str = ""
    topic: str = ""
    partition: int = -1
    offset: int = -1
    entry_id: str = ""

    @property
    def ok(self) -> bool:
        return self.durable is Durable.TRUE


Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to send; ``entry_id`` (a WAL entry's) is echoed in its Delivery."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    partition: int | None = None
    entry_id: str = ""


class Producer(Protocol):
    """Sends records to Kafka topics; each send ends in a Delivery (never an exception)."""

    def send_nowait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Delivery]:
        """Enqueue one record and return the future of its answer, so many sends can be awaited together."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Delivery:
        """Send one record and wait for its answer."""

    def send_many(self, records: Sequence[Outgoing]) -> asyncio.Future[list[Delivery]]:
        """Send records in this order; the future is their answers, in the same order, once all are in."""

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still pending."""

    def close(self, timeout: float = 30.0) -> int: ...


class StateTable(Protocol):
    """The fan-out's idempotency state per key: read from memory, and written ahead to a durable changelog (the
    Faust table's, partitioned like the log) before it is used."""

    def get(self, key: bytes) -> Any:
        """The key's state as last set, or None."""

    def persist(self, changes: Sequence[tuple[bytes, int, Mapping[str, Any]]]) -> asyncio.Future[list[Delivery]]:
        """Send keys' new states (key, partition, value) to their changelog partitions; the future is their
        durable answers."""

    def set(self, key: bytes, value: Mapping[str, Any]) -> None:
        """Keep the key's new state in memory (once it is persisted)."""


# -- sinks -------------------------------------------------------------------------------------------------------------


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
class SinkResult:
    """What became of one SinkWrite."""

    outcome: Outcome
    error: str = ""


class Sink(Protocol):
    """A versioned, idempotent target. Delivery guarantee: a write of version v never replaces a newer version,
    so replays, duplicates and out-of-order writes all converge to the newest version."""

    name: str

    async def ensure_schema(self) -> None:
        """Create the keyspace/table/index if missing (idempotent)."""

    async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
        """Apply a batch; one result per write, in order. Never raises for a per-write failure."""

    async def close(self) -> None: ...
