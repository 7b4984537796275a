"""In-memory stand-ins for the ports, for unit tests of pure logic: a producer and a versioned sink."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.model import Op
from streams.ports import Delivery, Durable, Headers, Outcome, Outgoing, SinkResult, SinkWrite


@dataclass(frozen=True, slots=True)
class Sent:
    """One record the producer was asked to send."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    partition: int | None


class MemoryProducer:
    """A ``streams.ports.Producer`` that keeps what it is sent.

    Every send is recorded in ``sent`` at once. Its answer is TRUE by default; ``fail(topic)`` makes the next
    sends to a topic answer FALSE (or UNKNOWN) instead, and ``hold(topic)`` keeps their answers back until
    ``release(topic)``, so a test can decide when a follow-up record becomes durable."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._failing: dict[str, Durable] = {}
        self._held: dict[str, list[tuple[asyncio.Future[Delivery], Delivery]]] = {}
        self._offsets: dict[tuple[str, int], int] = {}

    def fail(self, topic: str, durable: Durable = Durable.FALSE) -> None:
        self._failing[topic] = durable

    def recover(self, topic: str) -> None:
        self._failing.pop(topic, None)

    def hold(self, topic: str) -> None:
        self._held.setdefault(topic, [])

    def release(self, topic: str) -> None:
        for future, delivery in self._held.pop(topic, []):
            if not future.done():
                future.set_result(delivery)

    def to(self, topic: str) -> list[Sent]:
        """What was sent to ``topic``, in order."""
        return [s for s in self.sent if s.topic == topic]

    def send_nowait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Delivery]:
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(topic, key, value, tuple(headers or ()), partition))
        failing = self._failing.get(topic)
        if failing is not None:
            delivery = Delivery(failing, f"{topic}: refused by the test")
        else:
            place = (topic, partition or 0)
            offset = self._offsets.get(place, 0)
            self._offsets[place] = offset + 1
            delivery = Delivery(Durable.TRUE, "", topic, partition or 0, offset)
        if topic in self._held:
            self._held[topic].append((future, delivery))
        else:
            future.set_result(delivery)
        return future

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Delivery:
        return await self.send_nowait(topic, key, value, headers, partition)

    def send_many(self, records: Sequence[Outgoing]) -> asyncio.Future[list[Delivery]]:
        sends = [self.send_nowait(r.topic, r.key, r.value, r.headers, r.partition) for r in records]

        async def gather() -> list[Delivery]:
            answers = await asyncio.gather(*sends)
            return [dataclasses.replace(a, entry_id=r.entry_id) for a, r in zip(answers, records, strict=True)]

        return asyncio.ensure_future(gather())

    def flush(self, timeout: float = 30.0) -> int:
        return sum(len(held) for held in self._held.values())

    def close(self, timeout: float = 30.0) -> int:
        return self.flush(timeout)


class MemorySink:
    """Versioned like the real sinks (an older write never replaces a newer one); can be told to fail."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[str, tuple[int, object]] = {}
        self.writes = 0
        self.fail: Outcome | None = None

    async def ensure_schema(self) -> None: ...

    async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
        out = []
        for w in writes:
            self.writes += 1
            if self.fail is not None:
                out.append(SinkResult(self.fail, f"{self.name} failed"))
                continue
            held = self.rows.get(w.key)
            if held and held[0] >= w.sequence:
                out.append(SinkResult(Outcome.STALE))
                continue
            self.rows[w.key] = (w.sequence, None if w.op is Op.DELETE else w.document)
            out.append(SinkResult(Outcome.APPLIED))
        return out

    async def close(self) -> None: ...

    def live(self) -> dict[str, object]:
        """The rows that exist (not deleted), by key."""
        return {key: doc for key, (_, doc) in self.rows.items() if doc is not None}


class MemoryTable:
    """A ``streams.ports.StateTable`` on a dict; what was persisted is kept in ``changelog`` (key, partition,
    value), and a key's state is visible only once ``set``."""

    def __init__(self) -> None:
        self.data: dict[bytes, Any] = {}
        self.changelog: list[tuple[bytes, int, Any]] = []
        self.failing = False

    def get(self, key: bytes) -> Any:
        return self.data.get(key)

    def persist(self, changes: Sequence[tuple[bytes, int, Mapping[str, Any]]]) -> asyncio.Future[list[Delivery]]:
        future: asyncio.Future[list[Delivery]] = asyncio.get_running_loop().create_future()
        if self.failing:
            future.set_result([Delivery(Durable.UNKNOWN, "changelog refused by the test") for _ in changes])
            return future
        answers = []
        for key, partition, value in changes:
            self.changelog.append((key, partition, value))
            answers.append(Delivery(Durable.TRUE, "", "changelog", partition, len(self.changelog) - 1))
        future.set_result(answers)
        return future

    def set(self, key: bytes, value: Mapping[str, Any]) -> None:
        self.data[key] = value
