"""The Faust app the workers use: read_committed, low-latency fetches, and one event per fetched partition chunk.

Faust turns read_committed on only together with its own exactly-once transactions, and waits up to 1.5 s per
fetch. walstream needs the first without the second (a WriteBatch is a Kafka transaction that must be seen
whole or not at all), and a short fetch wait so delayed entries and retries stay on time.

Faust pays a fixed cost per event (fetcher, conductor, stream, ack). For the namespaces' logs, which the
fan-out agents apply in batches anyway, the consumer hands each partition's fetched records to the agent as one
event (a *chunk*): its value is the list of records and its offset the last record's. The offsets before it
that the chunk covers (and any transaction markers between them) are registered as Faust's offset gap, so
acknowledging the chunk makes the whole range committable, and nothing past an unacknowledged chunk ever is.
Other topics (the tables' changelogs during recovery) keep one event per record.

This relies on Faust's private consumer API, so faust-streaming, mode-streaming and aiokafka are pinned to exact
versions, and tests/integration/test_faust_contract.py checks the committed offsets on the real Kafka.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faust
import mode.loop
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, TransportT
from faust.types.tuples import ConsumerMessage

from connectors.endpoints import Kafka, kafka_access
from connectors.kafka.config import ssl_context
from streams.config import KafkaProtocol, KafkaSecurity

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 100
#: How often the consumer looks for records it fetched that never reached the agent (see ``lost_fetches``).
LOST_FETCH_CHECK_S = 5.0
#: How long a consumer group waits for a member that stopped answering (a killed worker) before moving its
#: partitions to the others.
SESSION_TIMEOUT_S = 10.0


def use_uvloop() -> None:
    """Run the worker's event loop on uvloop (call before the app's loop exists)."""
    mode.loop.use("uvloop")


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Set before the consumer starts; aiokafka reads both when it builds its fetcher.
        consumer._isolation_level = "read_committed"
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class _Consumer(driver.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_hand = False  # a fetch is being handed over to the drain loop
        self._refetched: dict[TP, tuple[int, int]] = {}  # per partition: what the timer last fetched again
        self._jumps: dict[TP, tuple[int, int]] = {}  # per partition: a jump a fetch found, fetched again
        self._suspected: dict[TP, tuple[int, int]] = {}  # lost_fetches at the previous check

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Like Faust's own, but a chunked topic's records of one fetch come as one message per partition."""
        chunked: frozenset[str] = getattr(self.app, "chunked_topics", frozenset())
        if not chunked:
            async for item in super().getmany(timeout):
                yield item
            return
        before = self._positions(chunked)
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        self._in_hand = True  # until this fetch is handed over: positions may run ahead (see lost_fetches)
        try:
            async for item in self._hand_over(chunked, before, records, active_partitions, generation_id):
                yield item
        finally:
            self._in_hand = False

    async def _hand_over(
        self,
        chunked: frozenset[str],
        before: Mapping[TP, int],
        records: Mapping[TP, Any],
        active_partitions: set[TP] | None,
        generation_id: int,
    ) -> AsyncIterator[tuple[TP, Any]]:
        if not self.flow_active:
            # As Faust does: a fetch that raced with a stop of the flow is dropped and the positions rewound.
            await self.perform_seek()
            await self._rewind(records)
            return
        after = self._positions(chunked)
        to_message = self._to_message
        dropped: dict[TP, Any] = {}
        skipped: dict[TP, tuple[int, int]] = {}
        for tp, tp_records in records.items():
            if not tp_records:
                continue
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                dropped[tp] = tp_records
                continue
            if not (active_partitions is None or tp in active_partitions or tp in self._buffered_partitions):
                dropped[tp] = tp_records  # paused meanwhile (table recovery): read it again once resumed
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic not in chunked:
                for record in tp_records:
                    yield tp, to_message(tp, record)
                continue
            # This fetch read from the position before it up to the position after it: the records, and any
            # transaction markers or aborted records between and after them.
            start = min(before.get(tp, tp_records[0].offset), tp_records[0].offset)
            end = tp_records[-1].offset
            if start == before.get(tp, start):
                end = max(end, after.get(tp, 0) - 1)
            back = self._skips(tp, start)
            if back is not None:
                skipped[tp] = (back, start)
                continue
            yield tp, await self._chunk(tp, tp_records, start, end, generation_id)
        if dropped or skipped:
            await self._rewind(dropped)
            await self._read_again(skipped)
            return
        for tp, position in after.items():
            # A fetch that read only transaction markers or aborted records moves the position without a record:
            # an empty chunk takes the committed offset past them (else the group would look behind forever).
            start = before.get(tp)
            if tp in records or start is None or position <= start:
                continue
            if active_partitions is not None and tp not in active_partitions:
                continue
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                return
            back = self._skips(tp, start)
            if back is not None:
                await self._read_again({tp: (back, start)})
                return
            yield tp, await self._chunk(tp, (), start, position - 1, generation_id)

    def _skips(self, tp: TP, start: int) -> int | None:
        """The read offset to go back to when a chunk from ``start`` would pass over records the drain loop
        never passed on, else None. Faust's drain loop takes any jump past its read offset for a gap to commit
        over, so such a chunk would commit records that never reached the agent: they are fetched again
        instead. The same jump found again by the very next fetch after that is real (the records left the log
        meanwhile, by retention) and is let through."""
        read = self._read_offset.get(tp)
        if read is None or start <= read + 1:
            self._jumps.pop(tp, None)
            return None
        if self._jumps.pop(tp, None) == (read, start):
            log.warning(
                "partition %s of %s: offsets %d..%d are no longer in the log; going on from %d",
                tp.partition,
                tp.topic,
                read + 1,
                start - 1,
                start,
            )
            return None
        self._jumps[tp] = (read, start)
        return read

    async def _read_again(self, lost: Mapping[TP, tuple[int, int]]) -> None:
        """Seek each partition back to its read offset: ``{tp: (read offset, where the position had got to)}``."""
        for tp, (read, position) in lost.items():
            log.warning(
                "partition %s of %s: offsets %d..%d were fetched but never reached the agent; reading them again",
                tp.partition,
                tp.topic,
                read,
                position - 1,
            )
            on_lost = getattr(self.app, "on_lost_fetch", None)
            if on_lost is not None:
                on_lost(tp.topic)
            await self.seek(tp, read)  # from the read offset itself: the table skips a record that did arrive

    def lost_fetches(self) -> dict[TP, tuple[int, int]]:
        """Chunked partitions whose fetch position ran past what Faust's drain loop passed on to the agent, while
        no fetch is being handed over: ``{tp: (read offset, fetch position)}``.

        Every fetched record must reach the agent or be fetched again. Around a rebalance and the table recovery
        after it, a partition's position has been seen to move past records that never reached the agent and
        were never sought back. On a partition that gets more records, the next chunk finds the jump
        (``_skips``); on a quiet one, nothing would, and its committed offset would stand still for good: this
        check, run on a timer, finds those."""
        if self._in_hand or not self.flow_active or self.app.rebalancing:
            return {}
        chunked: frozenset[str] = getattr(self.app, "chunked_topics", frozenset())
        active = self._active_partitions
        lost = {}
        for tp, position in self._positions(chunked).items():
            if tp in self._paused_partitions or (active is not None and tp not in active):
                continue
            read = self._read_offset.get(tp)
            if read is not None and position > read + 1 and self._refetched.get(tp) != (read, position):
                lost[tp] = (read, position)
        return lost

    async def recover_lost_fetches(self) -> None:
        """Fetch again what ``lost_fetches`` finds twice in a row unchanged (a delivery in progress moves on)."""
        lost = self.lost_fetches()
        previous, self._suspected = self._suspected, lost
        confirmed = {tp: where for tp, where in lost.items() if previous.get(tp) == where}
        if confirmed and not self._in_hand:
            await self._read_again(confirmed)
            for tp, where in confirmed.items():
                self._suspected.pop(tp, None)
                self._refetched[tp] = where  # not again for the same positions (a quiet log's start moved on)

    async def _rewind(self, dropped: Mapping[TP, Any]) -> None:
        """Fetched records that were not delivered moved the position past them all the same: move it back, so
        they are read again. (Faust itself relies on seeking to the committed offset, which a partition that
        never had a commit lacks: its dropped records would be lost.)"""
        assigned = self.assignment()
        positions = self._positions(frozenset(tp.topic for tp in dropped))
        for tp, tp_records in dropped.items():
            first = tp_records[0].offset if tp_records else None
            # Never forward: a seek Faust made meanwhile (to the committed offset) may already be behind them.
            if first is not None and tp in assigned and positions.get(tp, first) > first:
                await self.seek(tp, first)

    def _positions(self, chunked: frozenset[str]) -> dict[TP, int]:
        """The fetch position of every assigned partition of a chunked topic."""
        consumer = getattr(self._thread, "_consumer", None)
        subscription = consumer._subscription.subscription if consumer is not None else None
        assignment = subscription.assignment if subscription is not None else None
        if assignment is None:
            return {}
        positions = {}
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            if tp.topic in chunked and state is not None and state.has_valid_position:
                positions[TP(tp.topic, tp.partition)] = state.position
        return positions

    async def _chunk(self, tp: TP, records: Sequence[Any], start: int, end: int, generation_id: int) -> ConsumerMessage:
        """One message for ``records`` (maybe none), at offset ``end``; the offsets from ``start`` (where this
        fetch began) up to it become Faust's offset gap, acknowledged with the chunk. Nothing outside what this
        one fetch read is ever part of it."""
        if end > start:
            await self._add_gap(tp, start, end - 1)
        last = records[-1] if records else None
        timestamp = last.timestamp / 1000.0 if last is not None and last.timestamp is not None else None
        return ConsumerMessage(
            tp.topic,
            tp.partition,
            end,
            timestamp,  # type: ignore[arg-type]
            last.timestamp_type if last is not None else 0,
            None,
            None,
            list(records),  # type: ignore[arg-type]
            None,
            0,
            len(records),
            tp,
            generation_id=generation_id,
        )

    def ack(self, message: Any) -> bool:
        """Faust's ack, refusing a message of an earlier consumer generation. After a rebalance the positions
        go back to the committed offsets and the records are delivered (and acknowledged) again; an ack that
        finishes late for the old delivery would otherwise mix with the new chunks' offset gaps, and Faust folds
        a whole gap into the acknowledged offsets, so the commit could pass records not processed yet."""
        generation = message.generation_id
        if generation is not None and generation != self.app.consumer_generation_id:
            return False
        return bool(super().ack(message))


class _Transport(driver.Transport):
    Consumer = _Consumer


class WalApp(faust.App):
    """Also closes the driver sessions handed to ``closers`` when the app stops, and delivers the topics in
    ``chunked_topics`` as one event per fetched partition chunk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self.chunked_topics: frozenset[str] = frozenset()
        #: Told the topic of every partition whose lost fetch was read again.
        self.on_lost_fetch: Callable[[str], None] | None = None
        self.timer(LOST_FETCH_CHECK_S)(self._recover_lost_fetches)

    async def _recover_lost_fetches(self) -> None:
        consumer = self.consumer
        if self.chunked_topics and isinstance(consumer, _Consumer):
            try:
                await consumer.recover_lost_fetches()
            except Exception:  # a timer that raises would crash the app; the next check tries again
                log.exception("the lost-fetch check failed")

    def chunk(self, topic: str) -> None:
        """Deliver ``topic``'s records to its agent as chunks (lists of aiokafka ConsumerRecords)."""
        self.chunked_topics = self.chunked_topics | {topic}

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        loop = asyncio.get_running_loop()
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)

    async def on_stop(self) -> None:
        await super().on_stop()
        for close in self.closers:
            await close()


def faust_credentials(security: KafkaSecurity) -> faust.auth.Credentials | None:
    """The worker's Kafka client (aiokafka, inside Faust) with the same security as every librdkafka client."""
    context = ssl_context(security)
    if security.protocol is KafkaProtocol.SASL_SSL:
        assert security.username is not None and security.password is not None  # the settings require both
        return faust.SASLCredentials(
            username=security.username,
            password=security.password.get_secret_value(),
            ssl_context=context,
            mechanism=security.sasl_mechanism.value,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def new_app(name: str, bootstrap: Kafka, data_dir: Path, replication_factor: int = 1) -> WalApp:
    """The app of a worker group: raw keys and values, memory tables with changelogs, explicit acks."""
    data_dir.mkdir(parents=True, exist_ok=True)
    access = kafka_access(bootstrap)
    return WalApp(
        name,
        broker=f"kafka://{access.bootstrap}",
        broker_credentials=faust_credentials(access.security),
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        datadir=str(data_dir),
        topic_replication_factor=replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        stream_wait_empty=False,
        # Acks come per chunk of records; commit at least every few chunks, and every interval.
        broker_commit_every=8,
        # A killed worker's partitions move on within seconds, not after a minute.
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=SESSION_TIMEOUT_S / 5,
    )
