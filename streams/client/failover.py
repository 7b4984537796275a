"""Writer failover across regions: a replicated namespace's entry goes to the next region's log when the writer's
own region does not answer.

The contract: a region is skipped only when its Kafka did not answer at all within ``answer_timeout_s`` (a
metadata request, before anything is sent there), so the entry certainly is not in its log. Once an entry was
sent to a region, that region's answer is the answer: TRUE, FALSE, or UNKNOWN. An UNKNOWN is never retried in
another region, because the entry may be in the first region's log already and would then be applied twice
(MirrorMaker 2 brings it over later). The caller resolves an UNKNOWN as with one region: write the same entry
(same entry id and sequence) again to the same region once it answers; or, if that region stays down, write the
same entry to another region knowing that it may then be in two logs, which is harmless for the stores (equal
sequence and payload: the same state wherever it lands) and shows as two change events at most.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from streams.client.sdk import WalWriter
from streams.model import WalEntry
from streams.namespaces import Namespace
from streams.ports import Delivery, Durable

#: After a region answered, it is not asked again for this long before the next write (one probe per second).
_HEALTHY_FOR_S = 1.0


@dataclass(frozen=True, slots=True)
class RegionalDelivery:
    """The durable answer and the region whose log it is from ('' when no region took the entry)."""

    delivery: Delivery
    region: str

    @property
    def ok(self) -> bool:
        return self.delivery.ok


class FailoverWriter:
    """Writes entries to the first region of ``writers`` (the writer's own) that answers; a namespace without
    ``replication.failover`` is written only to the first region."""

    def __init__(
        self,
        writers: Sequence[tuple[str, WalWriter]],
        namespaces: Mapping[str, Namespace],
        answer_timeout_s: float = 10.0,
    ) -> None:
        if not writers:
            raise ValueError("a failover writer needs at least one region")
        self._writers = list(writers)
        self._namespaces = dict(namespaces)
        self._timeout = answer_timeout_s
        self._answered_at: dict[str, float] = {}

    def regions_for(self, namespace: str) -> list[str]:
        """The regions an entry of ``namespace`` may go to, in order."""
        ns = self._namespaces.get(namespace)
        if ns is None:
            raise ValueError(f"unknown namespace {namespace!r}; known: {', '.join(sorted(self._namespaces))}")
        own = self._writers[0][0]
        if ns.replication is None or not ns.replication.failover:
            return [own]
        return [region for region, _ in self._writers if region in ns.replication.regions]

    async def write_entry(self, entry: WalEntry) -> RegionalDelivery:
        writers = dict(self._writers)
        skipped = []
        for region in self.regions_for(entry.namespace):
            if not await self._answers(region, writers[region]):
                skipped.append(region)
                continue
            return RegionalDelivery(await writers[region].write_entry(entry), region)
        return RegionalDelivery(
            Delivery(
                Durable.FALSE,
                f"no region answered within {self._timeout:.0f}s ({', '.join(skipped)}); the entry was not written",
                entry_id=entry.entry_id,
            ),
            "",
        )

    async def _answers(self, region: str, writer: WalWriter) -> bool:
        if time.monotonic() - self._answered_at.get(region, float("-inf")) < _HEALTHY_FOR_S:
            return True
        loop = asyncio.get_running_loop()
        answered = await loop.run_in_executor(None, writer.reaches_kafka, self._timeout)
        if answered:
            self._answered_at[region] = time.monotonic()
        return answered

    def close(self, timeout: float = 30.0) -> None:
        for _, writer in self._writers:
            writer.close(timeout)
