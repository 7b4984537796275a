"""TierBook: holding tier partitions until due, waiting items in memory, and gap-aware commits, without Kafka."""

from __future__ import annotations

from streams.core.tiers import TierBook

A = ("wal.orders.retry.1s", 0)
B = ("wal.orders.retry.1s", 1)


def test_a_held_partition_is_resumed_only_once_due() -> None:
    book: TierBook[str] = TierBook()
    book.hold(A, until_ms=5_000)
    book.hold(B, until_ms=9_000)
    assert book.is_held(A) and book.held == {A: 5_000, B: 9_000}
    assert book.resume_due(4_999) == []
    assert book.resume_due(5_000) == [A]
    assert not book.is_held(A) and book.is_held(B)
    assert book.resume_due(100_000) == [B] and book.held == {}


def test_the_poll_wait_ends_at_the_next_wakeup() -> None:
    book: TierBook[str] = TierBook()
    assert book.wait_s(0) == 1.0  # nothing held: the longest wait
    book.hold(A, until_ms=300)
    assert book.wait_s(0) == 0.3
    book.wait(B, 100, "item")
    assert book.wait_s(0) == 0.1
    assert book.wait_s(500) == 0.001  # overdue: poll at once, never with a negative wait


def test_waiting_items_are_released_in_due_order() -> None:
    book: TierBook[str] = TierBook()
    book.wait(A, 300, "late")
    book.wait(B, 100, "early")
    book.wait(A, 200, "middle")
    assert book.release_due(50) == []
    assert book.release_due(250) == ["early", "middle"]
    assert book.release_due(10_000) == ["late"]


def test_commits_never_pass_an_unfinished_offset() -> None:
    book: TierBook[str] = TierBook()
    for offset in (10, 11, 12):
        book.start(A, offset)
    book.finish(A, 11)
    book.finish(A, 12)
    assert book.commits([A]) == {A: 10}  # 10 is still in flight (a waiting delayed entry, say)
    book.finish(A, 10)
    assert book.commits([A]) == {A: 13}
    assert book.commits([A]) == {}  # unchanged: nothing to commit again


def test_a_revoked_partition_is_forgotten() -> None:
    book: TierBook[str] = TierBook()
    book.hold(A, until_ms=5_000)
    book.start(A, 3)
    book.wait(A, 100, "on A")
    book.wait(B, 100, "on B")
    book.revoke([A])
    assert not book.is_held(A)
    assert book.release_due(1_000) == ["on B"]  # the new owner reads A's records again
    assert book.commits([A]) == {}


def test_a_partition_that_comes_back_commits_from_where_its_new_reads_start() -> None:
    book: TierBook[str] = TierBook()
    book.start(A, 100)
    book.finish(A, 100)
    assert book.commits([A]) == {A: 101}
    book.revoke([A])
    # Back again, reading from an earlier offset (the group's position was moved back meanwhile): what this
    # ownership finishes is committed, not measured against the last ownership's position.
    book.start(A, 40)
    book.finish(A, 40)
    assert book.commits([A]) == {A: 41}
