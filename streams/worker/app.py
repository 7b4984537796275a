"""The Faust app class the workers use: its consumer reads read_committed and fetches with low latency.

Faust turns read_committed on only together with its own exactly-once transactions, and waits up to 1.5 s per
fetch. walstream needs the first without the second (a WriteBatch is a Kafka transaction that must be seen
whole or not at all), and a short fetch wait so delayed entries and retries stay on time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver
from faust.types import TransportT

FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Set before the consumer starts; aiokafka reads both when it builds its fetcher.
        consumer._isolation_level = "read_committed"
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer = _Consumer


class WalApp(faust.App):
    """Also closes the driver sessions handed to ``closers`` when the app stops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closers: list[Callable[[], Awaitable[None]]] = []

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        await super().on_stop()
        for close in self.closers:
            await close()
