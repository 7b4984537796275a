"""Entry and batch ids: 32 hex digits, unique, and a forked child does not repeat its parent's ids."""

from __future__ import annotations

import os

from streams.ids import new_id


def test_ids_are_32_hex_digits_and_do_not_repeat() -> None:
    ids = [new_id() for _ in range(100_000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, " ".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    parent = {new_id() for _ in range(10)}
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    assert len(child) == 10 and not child & parent
