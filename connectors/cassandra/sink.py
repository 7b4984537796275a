"""Writes versioned rows to one Cassandra table: `USING TIMESTAMP <sequence>` makes every write idempotent."""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cassandra import (
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteFailure,
    WriteTimeout,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, BoundStatement, PreparedStatement, Statement

from streams.config import CassandraSecurity
from streams.model import Op
from streams.namespaces.spec import CassandraTarget
from streams.ports import Outcome, SinkResult, SinkWrite

_RETRYABLE = (OperationTimedOut, WriteTimeout, ReadTimeout, Unavailable, NoHostAvailable, WriteFailure, OSError)
_APPLIED = SinkResult(Outcome.APPLIED)
#: Statements per unlogged batch: Cassandra warns when one covers more than 10 partitions
#: (unlogged_batch_across_partitions_warn_threshold).
MAX_BATCH_STATEMENTS = 10
#: Estimated bytes per batch, below Cassandra's batch_size_warn_threshold (5 KiB) and far below its fail threshold
#: (50 KiB). A statement counts its serialized values plus an allowance for the cells' own overhead.
MAX_BATCH_BYTES = 4096
_STATEMENT_OVERHEAD = 96
_VALUE_OVERHEAD = 32

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Column:
    """A mapped column as the sink binds it: its name, CQL type and the payload field that fills it."""

    name: str
    cql_type: str
    field: str


def new_cluster(host: str, port: int, timeout: float = 10.0, security: CassandraSecurity | None = None) -> Cluster:
    """The one way walstream builds a driver cluster: protocol v5 (Cassandra 4+), one local data centre, and
    the cluster's password authentication and TLS when ``security`` asks for them."""
    security = security or CassandraSecurity()
    auth: dict[str, Any] = {}
    if security.username is not None and security.password is not None:
        auth["auth_provider"] = PlainTextAuthProvider(security.username, security.password.get_secret_value())
    if security.tls:
        # Each node's certificate is checked against that node's own address (the driver's default), so a
        # cluster whose nodes have certificates of their own works past the contact point.
        auth["ssl_context"] = cassandra_ssl_context(security)
    return Cluster(
        [host],
        **auth,
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


def cassandra_ssl_context(security: CassandraSecurity) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(security.ca_file) if security.ca_file else None)
    context.check_hostname = security.verify_hostname  # the certificate itself is always verified
    if security.cert_file is not None and security.key_file is not None:
        context.load_cert_chain(str(security.cert_file), str(security.key_file))
    return context


class CassandraSink:
    """Delivery guarantee: idempotent and order-free. Each write carries its sequence as the cell timestamp,
    so an older upsert or delete can never replace a newer one, whatever order they arrive in.

    Writes go out as small unlogged batches of statements that share their replicas, each statement with its own
    ``USING TIMESTAMP``: one request (one driver round trip, one event-loop wake-up) per batch instead of per row.
    An unlogged batch is not atomic across partitions, which changes nothing here: every statement is versioned,
    and a failed batch reports each of its writes as failed, so each is retried on its own terms."""

    def __init__(
        self,
        session: Session | Callable[[], Session],
        name: str,
        target: CassandraTarget,
        concurrency: int = 64,
        batch_statements: int = MAX_BATCH_STATEMENTS,
        batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.name = name
        self.target = target
        # A callable connects on first use (off the event loop), so a worker starts while Cassandra is down and
        # its writes are retryable failures until it answers.
        self._connect = session if callable(session) and not isinstance(session, Session) else None
        self._session: Session | None = session if isinstance(session, Session) else None
        self._limit = asyncio.Semaphore(concurrency)  # requests (batches or single statements) in flight
        self._batch_statements = max(1, batch_statements)
        self._batch_bytes = batch_bytes
        self._statements: tuple[PreparedStatement, PreparedStatement] | None = None
        # Each column with the Python type a value may have to be bound as it is (no coercion needed).
        fields = target.column_fields()
        self._mapped = tuple(_Column(name, spec.type, fields[name]) for name, spec in target.columns.items())
        self._columns = tuple((col, _EXACT_TYPES.get(col.cql_type)) for col in self._mapped)
        self._preparing: asyncio.Lock | None = None

    async def ensure_schema(self) -> None:
        t = self.target
        cols = ", ".join(f"{c.name} {c.cql_type}" for c in self._mapped)
        await self._run(
            f"CREATE KEYSPACE IF NOT EXISTS {t.keyspace} WITH replication = "
            f"{{'class': 'SimpleStrategy', 'replication_factor': {t.replication_factor}}}"
        )
        await self._run(
            f"CREATE TABLE IF NOT EXISTS {t.qualified} ({t.key_column} text PRIMARY KEY{', ' if cols else ''}{cols})"
        )
        await self.prepare()

    async def prepare(self) -> None:
        """Prepare the upsert and delete statements (once; the driver's blocking call runs off the event loop)."""
        await self._prepared()

    async def _prepared(self) -> tuple[PreparedStatement, PreparedStatement]:
        if self._statements is not None:
            return self._statements
        if self._preparing is None:
            self._preparing = asyncio.Lock()
        async with self._preparing:
            if self._statements is None:
                self._statements = await asyncio.to_thread(self._prepare_blocking)
        return self._statements

    def _live(self) -> Session:
        """The session, connecting first if needed (blocking: call it off the event loop)."""
        if self._session is None:
            assert self._connect is not None
            self._session = self._connect()
        return self._session

    def _prepare_blocking(self) -> tuple[PreparedStatement, PreparedStatement]:
        session = self._live()
        t = self.target
        names = [t.key_column, *(c.name for c in self._mapped)]
        marks = ", ".join("?" for _ in names)
        upsert = session.prepare(f"INSERT INTO {t.qualified} ({', '.join(names)}) VALUES ({marks}) USING TIMESTAMP ?")
        delete = session.prepare(f"DELETE FROM {t.qualified} USING TIMESTAMP ? WHERE {t.key_column} = ?")
        return upsert, delete

    async def write(self, writes: Sequence[SinkWrite]) -> list[SinkResult]:
        if not writes:
            return []
        upsert, delete = await self._prepared()
        session = self._live()  # connected by now: the statements were prepared on it
        results: list[SinkResult] = [_APPLIED] * len(writes)
        # Statements grouped by the replicas of their partition, so each batch's coordinator owns all of it.
        groups: dict[Any, list[tuple[int, BoundStatement, int]]] = {}
        replicas = session.cluster.metadata.get_replicas
        keyspace = self.target.keyspace
        for index, w in enumerate(writes):
            try:
                if w.op is Op.DELETE:
                    bound = delete.bind((w.sequence, w.key))
                else:
                    bound = upsert.bind((w.key, *self._row(w.document or {}), w.sequence))
            except (TypeError, ValueError, OverflowError, struct.error) as exc:
                results[index] = SinkResult(Outcome.FATAL, f"{self.name}: {exc}")
                continue
            values = bound.values
            size = _STATEMENT_OVERHEAD + _VALUE_OVERHEAD * len(values) + sum(map(len, filter(None, values)))
            owners = tuple(replicas(keyspace, bound.routing_key))
            groups.setdefault(owners, []).append((index, bound, size))
        requests = [request for group in groups.values() for request in self._chunks(group)]
        await asyncio.gather(*(self._execute(request, results) for request in requests))
        return results

    def _chunks(self, group: list[tuple[int, BoundStatement, int]]) -> list[list[tuple[int, BoundStatement, int]]]:
        """Split into batches of at most ``batch_statements`` statements and about ``batch_bytes``, which keeps
        Cassandra's batch warnings (more than 10 partitions, more than 5 KiB) quiet and far from its size limit."""
        chunks: list[list[tuple[int, BoundStatement, int]]] = []
        current: list[tuple[int, BoundStatement, int]] = []
        size = 0
        for item in group:
            if current and (len(current) >= self._batch_statements or size + item[2] > self._batch_bytes):
                chunks.append(current)
                current, size = [], 0
            current.append(item)
            size += item[2]
        if current:
            chunks.append(current)
        return chunks

    async def _execute(self, request: list[tuple[int, BoundStatement, int]], results: list[SinkResult]) -> None:
        """Run one batch (or one statement) and record its outcome for each of its writes."""
        if len(request) == 1:
            statement: Statement = request[0][1]
        else:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for _, bound, _ in request:
                batch.add(bound)
            statement = batch
        async with self._limit:
            try:
                await _await(self._live().execute_async(statement))
                return
            except InvalidRequest as exc:
                if len(request) == 1:
                    results[request[0][0]] = SinkResult(Outcome.FATAL, f"{self.name}: {exc}")
                    return
                failure = exc
            except _RETRYABLE as exc:
                outcome = SinkResult(Outcome.RETRYABLE, f"{self.name}: {type(exc).__name__}: {exc}")
                for index, _, _ in request:
                    results[index] = outcome
                return
            except Exception as exc:  # noqa: BLE001 - an unknown driver error is retried, never lost
                outcome = SinkResult(Outcome.RETRYABLE, f"{self.name}: {type(exc).__name__}: {exc}")
                for index, _, _ in request:
                    results[index] = outcome
                return
        # The batch as a whole was refused: run its statements one by one so only the bad ones are fatal.
        log.debug("%s: batch of %d refused (%s); writing its statements one by one", self.name, len(request), failure)
        await asyncio.gather(*(self._execute([item], results) for item in request))

    def _row(self, document: Mapping[str, Any]) -> list[Any]:
        row = []
        for col, exact in self._columns:
            value = document.get(col.field)
            row.append(value if value is None or type(value) is exact else _coerce(col, value))
        return row

    async def _run(self, cql: str) -> None:
        session = await asyncio.to_thread(self._live)
        await _await(session.execute_async(cql, timeout=60))

    async def close(self) -> None:
        return None


_EXACT_TYPES: dict[str, type] = {
    "text": str,
    "int": int,
    "bigint": int,
    "double": float,
    "boolean": bool,
    "blob": bytes,
}


def _coerce(col: _Column, value: Any) -> Any:
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
