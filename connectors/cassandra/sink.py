"""Writes versioned rows to one Cassandra table: `USING TIMESTAMP <sequence>` makes every write idempotent."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cassandra import (
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteFailure,
    WriteTimeout,
)
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.query import PreparedStatement

from connectors.base import Op, Outcome, SinkWrite, WriteResult

_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
CQL_TYPES = frozenset({"text", "int", "bigint", "double", "boolean", "timestamp", "blob", "uuid"})
_RETRYABLE = (OperationTimedOut, WriteTimeout, ReadTimeout, Unavailable, NoHostAvailable, WriteFailure, OSError)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    cql_type: str
    field: str  # the payload field this column is filled from


@dataclass(frozen=True, slots=True)
class CassandraTarget:
    """One table: the entity key goes to ``key_column``, payload fields to ``columns``."""

    name: str
    keyspace: str
    table: str
    key_column: str
    columns: tuple[Column, ...]
    replication_factor: int = 1
    _idents: tuple[str, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        for ident in (self.keyspace, self.table, self.key_column, *(c.name for c in self.columns)):
            if not _IDENT.match(ident):
                raise ValueError(f"target {self.name}: {ident!r} is not a valid Cassandra identifier")
        for col in self.columns:
            if col.cql_type not in CQL_TYPES:
                raise ValueError(f"target {self.name}: column {col.name} has unsupported type {col.cql_type!r}")

    @property
    def qualified(self) -> str:
        return f"{self.keyspace}.{self.table}"


def new_cluster(host: str, port: int, timeout: float = 10.0) -> Cluster:
    """The one way walstream builds a driver cluster: protocol v5 (Cassandra 4+), one local data centre."""
    return Cluster(
        [host],
        port=port,
        protocol_version=5,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()), request_timeout=timeout
            )
        },
        connect_timeout=timeout,
        control_connection_timeout=timeout,
        # Back within seconds of an outage, not the driver's default of up to ten minutes.
        reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0),
    )


class CassandraSink:
    """Delivery guarantee: idempotent and order-free. Each write carries its sequence as the cell timestamp,
    so an older upsert or delete can never replace a newer one, whatever order they arrive in."""

    def __init__(self, session: Session, target: CassandraTarget, concurrency: int = 128) -> None:
        self.name = target.name
        self.target = target
        self._session = session
        self._limit = asyncio.Semaphore(concurrency)
        self._upsert: PreparedStatement | None = None
        self._delete: PreparedStatement | None = None

    async def ensure_schema(self) -> None:
        t = self.target
        cols = ", ".join(f"{c.name} {c.cql_type}" for c in t.columns)
        await self._run(
            f"CREATE KEYSPACE IF NOT EXISTS {t.keyspace} WITH replication = "
            f"{{'class': 'SimpleStrategy', 'replication_factor': {t.replication_factor}}}"
        )
        await self._run(
            f"CREATE TABLE IF NOT EXISTS {t.qualified} ({t.key_column} text PRIMARY KEY{', ' if cols else ''}{cols})"
        )

    def _prepare(self) -> tuple[PreparedStatement, PreparedStatement]:
        if self._upsert is None or self._delete is None:
            t = self.target
            names = [t.key_column, *(c.name for c in t.columns)]
            marks = ", ".join("?" for _ in names)
            self._upsert = self._session.prepare(
                f"INSERT INTO {t.qualified} ({', '.join(names)}) VALUES ({marks}) USING TIMESTAMP ?"
            )
            self._delete = self._session.prepare(
                f"DELETE FROM {t.qualified} USING TIMESTAMP ? WHERE {t.key_column} = ?"
            )
        return self._upsert, self._delete

    async def write(self, writes: Sequence[SinkWrite]) -> list[WriteResult]:
        upsert, delete = self._prepare()
        return list(await asyncio.gather(*(self._write_one(w, upsert, delete) for w in writes)))

    async def _write_one(self, w: SinkWrite, upsert: PreparedStatement, delete: PreparedStatement) -> WriteResult:
        if w.op is Op.DELETE:
            stmt, params = delete, (w.sequence, w.key)
        else:
            try:
                values = self._row(w.document or {})
            except (TypeError, ValueError) as exc:
                return WriteResult(Outcome.FATAL, f"{self.name}: {exc}")
            stmt, params = upsert, (w.key, *values, w.sequence)
        async with self._limit:
            try:
                await _await(self._session.execute_async(stmt, params))
            except _RETRYABLE as exc:
                return WriteResult(Outcome.RETRYABLE, f"{self.name}: {type(exc).__name__}: {exc}")
            except InvalidRequest as exc:
                return WriteResult(Outcome.FATAL, f"{self.name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - an unknown driver error is retried, never lost
                return WriteResult(Outcome.RETRYABLE, f"{self.name}: {type(exc).__name__}: {exc}")
        # Cassandra cannot tell us whether a newer version already existed; the write is harmless either way.
        return WriteResult(Outcome.APPLIED)

    def _row(self, document: Mapping[str, Any]) -> list[Any]:
        row = []
        for col in self.target.columns:
            value = document.get(col.field)
            row.append(None if value is None else _coerce(col, value))
        return row

    async def _run(self, cql: str) -> None:
        await _await(self._session.execute_async(cql, timeout=60))

    async def close(self) -> None:
        return None


def _coerce(col: Column, value: Any) -> Any:
    kind = col.cql_type
    if kind == "text":
        return value if isinstance(value, str) else str(value)
    if kind in ("int", "bigint"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"column {col.name} ({kind}) got {type(value).__name__} {value!r}")
        return value
    if kind == "double":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"column {col.name} (double) got {type(value).__name__} {value!r}")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise TypeError(f"column {col.name} (boolean) got {type(value).__name__} {value!r}")
        return value
    if kind == "blob":
        return value if isinstance(value, bytes) else str(value).encode()
    return value


def _await(future: ResponseFuture) -> asyncio.Future[Any]:
    """Bridge a driver future (completed on the driver's thread) into the running event loop."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Any] = loop.create_future()

    def ok(rows: Any) -> None:
        loop.call_soon_threadsafe(_settle, result, rows, None)

    def failed(exc: BaseException) -> None:
        loop.call_soon_threadsafe(_settle, result, None, exc)

    future.add_callbacks(ok, failed)
    return result


def _settle(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
