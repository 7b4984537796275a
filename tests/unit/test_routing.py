"""Router.failed: which tier an entry goes to, when it is given up, and which targets it carries."""

from __future__ import annotations

import asyncio
import time

from streams import topics
from streams.codec import Codec
from streams.core.dispatch import EntryOutcome
from streams.core.flood import FloodGuard
from streams.core.routing import Router, retry_history
from streams.core.schedule import RetrySchedule
from streams.metrics import Metrics
from streams.model import DeadLetter, Op, Origin, RetryEnvelope, new_entry
from streams.ports import Outcome, SinkResult
from tests.unit.fakes import MemoryProducer

NS = "orders"
CODEC = Codec()
ORIGIN = Origin(topics.wal_topic(NS), 2, 40)
#: 1s, 10s, 1m tiers; the wanted backoff doubles from 1s; four attempts in all.
SCHEDULE = RetrySchedule((1_000, 10_000, 60_000), 2.0, 4)


def route(outcome: EntryOutcome, attempt: int) -> tuple[str, RetryEnvelope | DeadLetter, int | None]:
    """Where Router.failed sends ``outcome`` after its ``attempt``-th try: (topic, decoded record, partition)."""
    producer = MemoryProducer()
    router = Router(NS, ("primary", "search"), SCHEDULE, producer, CODEC, Metrics(), FloodGuard(NS, 1000))

    async def send() -> None:
        await router.failed(outcome, CODEC.encode_entry(outcome.entry), ORIGIN, attempt, "first failure")

    asyncio.run(send())
    (sent,) = producer.sent
    value = sent.value or b""
    if sent.topic == topics.dlq_topic(NS):
        return sent.topic, CODEC.decode_dead_letter(value), sent.partition
    return sent.topic, CODEC.decode_retry_envelope(value), sent.partition


def failed(outcome: Outcome, *targets: str) -> EntryOutcome:
    entry = new_entry(NS, "k", Op.UPSERT, b"{}", sequence=7)
    return EntryOutcome(entry, applied=("primary",), failed={t: SinkResult(outcome, f"{t} is down") for t in targets})


def test_the_tier_follows_the_backoff_and_keeps_the_partition() -> None:
    before = int(time.time() * 1000)
    tiers = {}
    for attempt in (1, 2, 3):
        topic, envelope, partition = route(failed(Outcome.RETRYABLE, "search"), attempt)
        assert isinstance(envelope, RetryEnvelope) and partition == ORIGIN.partition
        tiers[attempt] = topic
        assert envelope.attempt == attempt and envelope.due_ms >= before + SCHEDULE.tiers_ms[0]
    # backoff 1s, 2s, 4s: the first tier that covers it
    assert tiers == {1: "wal.orders.retry.1s", 2: "wal.orders.retry.10s", 3: "wal.orders.retry.10s"}


def test_only_the_pending_targets_are_carried() -> None:
    _, envelope, _ = route(failed(Outcome.RETRYABLE, "search"), 1)
    assert isinstance(envelope, RetryEnvelope)
    assert envelope.pending_targets == ("search",)
    assert envelope.first_error == "first failure" and "search is down" in envelope.last_error
    assert envelope.origin == ORIGIN and envelope.entry.sequence == 7


def test_the_attempt_budget_ends_in_the_dlq_as_exhausted() -> None:
    topic, letter, _ = route(failed(Outcome.RETRYABLE, "search"), SCHEDULE.max_attempts)
    assert topic == topics.dlq_topic(NS) and isinstance(letter, DeadLetter)
    assert letter.error_class == "exhausted" and letter.attempts == SCHEDULE.max_attempts
    assert letter.pending_targets == ("search",) and "first error: first failure" in letter.reason


def test_a_fatal_failure_goes_to_the_dlq_at_once() -> None:
    topic, letter, _ = route(failed(Outcome.FATAL, "search"), 1)
    assert topic == topics.dlq_topic(NS) and isinstance(letter, DeadLetter)
    assert letter.error_class == "fatal" and letter.attempts == 1


def test_dead_letters_needed_counts_what_the_guard_must_admit() -> None:
    router = Router(NS, ("primary", "search"), SCHEDULE, MemoryProducer(), CODEC, Metrics(), FloodGuard(NS, 1000))
    outcomes = [
        (failed(Outcome.RETRYABLE, "search"), 1),  # retried
        (failed(Outcome.RETRYABLE, "search"), 4),  # exhausted
        (failed(Outcome.FATAL, "search"), 1),  # fatal
        (EntryOutcome(new_entry(NS, "k", Op.DELETE, b"", sequence=1), applied=("primary", "search")), 1),  # done
    ]
    assert router.dead_letters_needed(outcomes) == 2


def test_an_entry_due_again_is_handed_back_to_its_log_with_its_history() -> None:
    producer = MemoryProducer()
    router = Router(NS, ("primary", "search"), SCHEDULE, producer, CODEC, Metrics(), FloodGuard(NS, 1000))
    entry = new_entry(NS, "k", Op.UPSERT, b"{}", sequence=7)
    envelope = RetryEnvelope(entry, 2, 0, ("search",), "first", "last", ORIGIN, "1s")

    async def send() -> None:
        await router.when_due(envelope, int(time.time() * 1000))

    asyncio.run(send())
    (sent,) = producer.sent
    assert sent.topic == topics.wal_topic(NS) and sent.partition == ORIGIN.partition and sent.key == b"k"
    assert CODEC.decode_entry(sent.value or b"") == entry  # unchanged: same id, sequence and targets
    assert retry_history(sent.headers) == (2, "first")
    assert retry_history([]) == (0, None)
    assert retry_history([("walstream-attempt", b"not a number")]) == (0, None)


def test_a_delayed_entry_not_due_yet_moves_on_to_its_next_tier() -> None:
    producer = MemoryProducer()
    router = Router(NS, ("primary", "search"), SCHEDULE, producer, CODEC, Metrics(), FloodGuard(NS, 1000))
    now_us = time.time_ns() // 1000
    entry = new_entry(NS, "k", Op.UPSERT, b"{}", delay_ms=45_000, now_us=now_us)
    envelope = RetryEnvelope(entry, 0, 0, ("primary", "search"), "", "", ORIGIN, "1m")

    async def send() -> None:
        await router.when_due(envelope, now_us // 1000 + 20_000)  # 25 s still to wait

    asyncio.run(send())
    (sent,) = producer.sent
    assert sent.topic == "wal.orders.retry.10s"
    assert CODEC.decode_retry_envelope(sent.value or b"").attempt == 0
