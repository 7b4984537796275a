"""Load shedding: counts calls in flight and refuses the ones over the limit instead of queueing them."""

from __future__ import annotations


class InFlightLimiter:
    """A non-blocking counter: ``try_acquire`` never waits, so a saturated server answers at once."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, got {limit}")
        self.limit = limit
        self._in_flight = 0
        self.shed = 0  # calls refused so far

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        if self._in_flight >= self.limit:
            self.shed += 1
            return False
        self._in_flight += 1
        return True

    def release(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("release() without a matching try_acquire()")
        self._in_flight -= 1
