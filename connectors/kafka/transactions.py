"""Writes a batch of records atomically in one Kafka transaction, with a small pool of transactional producers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connectors.endpoints import Kafka
from connectors.kafka.config import producer_config
from streams.ports import Delivery, Durable, Outgoing

log = logging.getLogger(__name__)

#: Called after each entry of a batch is handed to the producer, with its index; raising aborts the batch.
#: Only tests set it (on the server object): it is how a batch that fails part-way is simulated.
BatchFault = Callable[[int], None]


class InjectedFault(RuntimeError):
    """The failure a test injected into a batch."""


def fail_after(entries: int) -> BatchFault:
    """A fault that lets ``entries`` entries reach the broker (flushed inside the open transaction), then fails."""

    def fault(index: int) -> None:
        if index + 1 >= entries:
            raise InjectedFault(f"injected failure after {entries} of the batch's entries")

    return fault


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """``verdict`` is TRUE when every record committed (``placed`` says where each landed), FALSE when the
    transaction was aborted and nothing is visible, UNKNOWN when the commit's outcome is unclear."""

    verdict: Delivery
    placed: tuple[Delivery, ...] = ()


def _outcome(durable: Durable, message: str, placed: tuple[Delivery, ...] = ()) -> BatchOutcome:
    return BatchOutcome(Delivery(durable, message), placed)


class _Slot:
    """One transactional producer; used by one batch at a time, always from a worker thread."""

    def __init__(self, bootstrap: Kafka, transactional_id: str, timeout_s: float) -> None:
        self.bootstrap = bootstrap
        self.transactional_id = transactional_id
        self.timeout_s = timeout_s
        self._producer: Any = None

    def _ready(self) -> Any:
        if self._producer is None:
            producer = Producer(
                producer_config(
                    self.bootstrap,
                    {
                        "transactional.id": self.transactional_id,
                        "transaction.timeout.ms": int(self.timeout_s * 1000) * 2,
                        "delivery.timeout.ms": int(self.timeout_s * 1000),
                    },
                )
            )
            producer.init_transactions(self.timeout_s)
            self._producer = producer
        return self._producer

    def discard(self) -> None:
        """Drop a producer in an unknown or fatal state; the next batch builds and initializes a new one."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaException):  # nothing to keep from a broken producer
                producer.flush(0)

    def close(self, timeout_s: float) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)
            self._producer = None

    def write(self, records: Sequence[Outgoing], fault: BatchFault | None) -> BatchOutcome:
        try:
            producer = self._ready()
        except KafkaException as exc:
            self.discard()
            return _outcome(Durable.FALSE, f"transactions unavailable: {_describe(exc)}")
        placed: list[Delivery | None] = [None] * len(records)
        errors: list[str] = []

        def reporter(index: int, entry_id: str) -> Callable[[KafkaError | None, Message], None]:
            def report(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    errors.append(f"{err.name()}: {err.str()}")
                else:
                    placed[index] = Delivery(
                        Durable.TRUE, "", msg.topic() or "", msg.partition() or 0, msg.offset() or 0, entry_id
                    )

            return report

        try:
            producer.begin_transaction()
            for index, record in enumerate(records):
                self._produce(producer, record, reporter(index, record.entry_id))
                if fault is not None:
                    producer.flush(self.timeout_s)  # the entries so far really reach the broker, uncommitted
                    fault(index)
        except Exception as exc:  # noqa: BLE001 - any failure before the commit aborts the batch
            return self._abort(producer, f"{type(exc).__name__}: {exc}")
        return self._commit(producer, placed, errors)

    def _produce(self, producer: Any, record: Outgoing, report: Any) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                producer.produce(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    on_delivery=report,
                )
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise
                producer.poll(0.05)

    def _commit(self, producer: Any, placed: list[Delivery | None], errors: list[str]) -> BatchOutcome:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                producer.commit_transaction(max(deadline - time.monotonic(), 0.1))
                break
            except KafkaException as exc:
                err = _error(exc)
                if err is not None and err.txn_requires_abort():
                    return self._abort(producer, f"commit failed: {_describe(exc)}")
                if err is not None and err.retriable() and time.monotonic() < deadline:
                    continue
                # Fatal, or still failing at the deadline: the coordinator may or may not have the commit.
                self.discard()
                return _outcome(Durable.UNKNOWN, f"commit outcome unknown: {_describe(exc)}")
        if errors or any(p is None for p in placed):
            # Committed means every record was acknowledged; anything else is a broken invariant, not a guess.
            self.discard()
            return _outcome(Durable.UNKNOWN, f"committed, but delivery reports disagree: {errors[:3]}")
        return _outcome(Durable.TRUE, "", tuple(p for p in placed if p is not None))

    def _abort(self, producer: Any, reason: str) -> BatchOutcome:
        try:
            producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            # No commit was ever requested, so the transaction can only end aborted (by the coordinator's timeout,
            # or when the next producer with this transactional.id initializes).
            log.warning("abort of %s failed (%s); recreating the producer", self.transactional_id, _describe(exc))
            self.discard()
        return _outcome(Durable.FALSE, f"batch aborted, nothing is visible: {reason}")


def _error(exc: KafkaException) -> KafkaError | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


def _describe(exc: KafkaException) -> str:
    err = _error(exc)
    return f"{err.name()}: {err.str()}" if err is not None else str(exc)


class TransactionalWriter:
    """A pool of ``size`` transactional producers; each batch takes one, so at most ``size`` commit at once."""

    def __init__(
        self,
        bootstrap: Kafka,
        *,
        size: int = 2,
        transactional_id_prefix: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if size < 1:
            raise ValueError("the pool needs at least one transactional producer")
        prefix = transactional_id_prefix or f"walstream-api-{uuid.uuid4().hex[:12]}"
        self._slots = [_Slot(bootstrap, f"{prefix}-{i}", timeout_s) for i in range(size)]
        self._free: asyncio.Queue[_Slot] | None = None

    def _queue(self) -> asyncio.Queue[_Slot]:
        if self._free is None:
            self._free = asyncio.Queue()
            for slot in self._slots:
                self._free.put_nowait(slot)
        return self._free

    async def write(self, records: Sequence[Outgoing], fault: BatchFault | None = None) -> BatchOutcome:
        """Commit every record, or none."""
        free = self._queue()
        slot = await free.get()
        # The confluent-kafka transaction calls block: run them off the event loop. Cancelling the caller does not
        # stop the thread, which finishes (commits or aborts) before the slot is handed to another batch.
        task = asyncio.get_running_loop().run_in_executor(None, slot.write, records, fault)
        task.add_done_callback(lambda _t: free.put_nowait(slot))
        return await asyncio.shield(task)

    def close(self, timeout_s: float = 10.0) -> None:
        for slot in self._slots:
            slot.close(timeout_s)
