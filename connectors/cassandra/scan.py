"""Reads a Cassandra target's rows with their versions: by token range with paging, or by key."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.query import SimpleStatement

from streams.namespaces.spec import CassandraTarget

#: Murmur3Partitioner's token space. No key has the minimum token (the partitioner maps it to the maximum), so
#: the ranges (start, end] starting at MIN_TOKEN cover every key exactly once.
MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1


@dataclass(frozen=True, slots=True)
class TokenRange:
    """The keys whose token is in (start, end]: the unit of a scan, and of a backfill's resume point."""

    index: int
    start: int
    end: int


def token_ranges(count: int) -> list[TokenRange]:
    """The token space cut into ``count`` ranges of equal width, in token order."""
    count = max(1, count)
    width = (MAX_TOKEN - MIN_TOKEN) // count
    bounds = [MIN_TOKEN + i * width for i in range(count)] + [MAX_TOKEN]
    return [TokenRange(i, bounds[i], bounds[i + 1]) for i in range(count)]


@dataclass(frozen=True, slots=True)
class Row:
    """One row: its key, its version (the newest write time of its columns, which is the sequence the sink wrote
    with ``USING TIMESTAMP``) and, when asked for, its column values."""

    key: str
    version: int
    values: dict[str, Any] | None = None


class CassandraReader:
    """Scans and looks up one table. Memory: one page of rows at a time (``page_size``)."""

    def __init__(self, session: Session, target: CassandraTarget, page_size: int = 1000) -> None:
        self.target = target
        self._session = session
        self._page_size = page_size
        self._columns = tuple(target.columns)
        key = target.key_column
        times = ", ".join(f"writetime({c})" for c in self._columns)
        values = ", ".join(self._columns)
        self._select_versions = f"SELECT {key}, {times} FROM {target.qualified}"
        self._select_rows = f"SELECT {key}, {values}, {times} FROM {target.qualified}"
        self._by_key = session.prepare(f"{self._select_versions} WHERE {key} = ?")
        self._range = {
            with_values: session.prepare(
                f"{self._select_rows if with_values else self._select_versions} "
                f"WHERE token({key}) > ? AND token({key}) <= ?"
            )
            for with_values in (False, True)
        }

    def scan(self, token_range: TokenRange, with_values: bool = False) -> Iterator[list[Row]]:
        """The rows of one token range, a page at a time (the driver's paging, ``page_size`` rows per page)."""
        bound = self._range[with_values].bind((token_range.start, token_range.end))
        bound.fetch_size = self._page_size
        result = self._session.execute(bound, timeout=60)
        while True:
            page = [self._row(r, with_values) for r in result.current_rows]
            if page:
                yield page
            if not result.has_more_pages:
                return
            result.fetch_next_page()

    def versions(self, keys: Sequence[str], concurrency: int = 64) -> dict[str, int]:
        """The version of each key the table holds (absent keys are left out): one single-partition read per key,
        ``concurrency`` at a time, so each goes straight to a replica of its key."""
        found: dict[str, int] = {}
        results = execute_concurrent_with_args(
            self._session, self._by_key, [(k,) for k in keys], concurrency=concurrency, raise_on_first_error=True
        )
        for _ok, rows in results:
            for r in rows:
                row = self._row(r, False)
                found[row.key] = row.version
        return found

    def count(self) -> int:
        """Rows in the table (a full scan on the server: for progress estimates of small tables only)."""
        statement = SimpleStatement(f"SELECT count(*) FROM {self.target.qualified}", fetch_size=None)
        return int(self._session.execute(statement, timeout=120).one()[0])

    def _row(self, r: Sequence[Any], with_values: bool) -> Row:
        n = len(self._columns)
        times = r[1 + n :] if with_values else r[1:]
        version = max((t for t in times if t is not None), default=0)
        values = dict(zip(self._columns, r[1 : 1 + n], strict=True)) if with_values else None
        return Row(r[0], int(version), values)
