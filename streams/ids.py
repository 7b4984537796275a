"""Random identifiers for entries and batches: 128 random bits as 32 hex digits, the form ``uuid4().hex`` has.

They only need to be unique, not secret, so they come from a generator seeded from the operating system once
per process (and again in a forked child, which would otherwise repeat its parent's sequence): a tenth of the
cost of asking the kernel for 16 bytes on every write.
"""

from __future__ import annotations

import os
import random

_random = random.Random(os.urandom(32))


def _reseed() -> None:
    _random.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """32 lower-case hex digits, random."""
    return f"{_random.getrandbits(128):032x}"
