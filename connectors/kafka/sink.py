"""Delivers entries to a plain Kafka topic (the delay queue's target): the payload, keyed by the entity key."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streams.model import Op
from streams.ports import Durable, Outcome, Producer, SinkResult, SinkWrite


class KafkaTopicSink:
    """Delivery guarantee: at least once. A topic has no versions, so a retried or replayed entry can be
    delivered again; consumers of the topic de-duplicate by key and the `walstream-sequence` header."""

    def __init__(self, name: str, topic: str, producer: Producer) -> None:
        self.name = name
        self.topic = topic
        self._producer = producer

    async def ensure_schema(self) -> None:
        return None  # topics are created by `namespaces apply`

    async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
        futures = [
            self._producer.send_nowait(
                self.topic,
                w.key.encode(),
                None if w.op is Op.DELETE else w.raw,
                headers=[("walstream-sequence", str(w.sequence).encode())],
            )
            for w in writes
        ]
        results = []
        for delivery in await asyncio.gather(*futures):
            if delivery.durable is Durable.TRUE:
                results.append(SinkResult(Outcome.APPLIED))
            elif delivery.durable is Durable.FALSE:
                results.append(SinkResult(Outcome.FATAL, f"{self.name}: {delivery.message}"))
            else:
                results.append(SinkResult(Outcome.RETRYABLE, f"{self.name}: {delivery.message}"))
        return results

    async def close(self) -> None:
        return None
