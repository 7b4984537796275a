"""A small progress bar on stderr for long CLI work (redrawn at most ten times a second)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 0)
        self.label = label
        self.done = 0
        self._stream = stream or sys.stderr
        self._width = width
        self._started = time.monotonic()
        self._drawn = 0.0
        self._tty = self._stream.isatty()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._drawn >= (0.1 if self._tty else 2.0) or self.done >= self.total:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn = now
        elapsed = max(now - self._started, 1e-9)
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        line = f"{self.label} [{bar}] {self.done}/{self.total} {self.done / elapsed:,.0f}/s"
        self._stream.write(("\r" + line) if self._tty else line + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic())
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()
