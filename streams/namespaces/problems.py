"""What is wrong with a namespace document or a request against it (re-exported by streams.namespaces.spec)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a namespace document: the dotted field path ('' for the whole file) and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class UnknownTargetError(ValueError):
    """A request names a target its namespace does not declare."""

    def __init__(self, namespace: str, unknown: Sequence[str], declared: Iterable[str]) -> None:
        self.namespace = namespace
        self.unknown = tuple(unknown)
        names = ", ".join(repr(name) for name in self.unknown)
        noun = "target" if len(self.unknown) == 1 else "targets"
        super().__init__(
            f"namespace {namespace!r} has no {noun} {names}; it declares: {', '.join(declared) or '(none)'}"
        )


class Problems(ValueError):
    """Raised inside validators to report several problems at paths relative to the model being validated."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = list(problems)
