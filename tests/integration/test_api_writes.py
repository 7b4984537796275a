"""WriteToLog against the real Kafka: durable writes land decodable on wal.<ns>; every refusal writes nothing."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from connectors.endpoints import Endpoints
from streams.api import messages
from streams.api.messages import BatchEntrySpec, BatchRequest, BulkDeleteRequest, LifecycleSpec, WriteRequest
from streams.client.grpc import ApiError, WalClient, write_request
from streams.model import Op
from streams.namespaces import Namespace
from streams.ports import Durable
from tests.integration.test_api_harness import (
    AVRO_SCHEMA,
    ApiHarness,
    drop_created_topics,  # noqa: F401 - an autouse fixture
    end_offsets,
    grew_by,
    read_log,
    running_api,
    write_namespace,
)

pytestmark = pytest.mark.integration

TOKENS = {"tok-checkout": "checkout", "tok-billing": "billing", "tok-admin": "order-admin"}


class World:
    def __init__(
        self, bootstrap: str, api: ApiHarness, open_ns: Namespace, locked: Namespace, avro: Namespace, closed: Namespace
    ):
        self.bootstrap = bootstrap
        self.api = api
        self.open = open_ns
        self.locked = locked
        self.avro = avro
        self.closed = closed

    def client(self, token: str | None = None) -> WalClient:
        return WalClient(self.api.target, token=token, timeout_s=30)

    def offsets(self) -> dict[str, dict[int, int]]:
        return {ns.name: end_offsets(self.bootstrap, ns) for ns in (self.open, self.locked, self.avro, self.closed)}


@pytest.fixture(scope="module")
def world(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("api-namespaces")
    bootstrap = endpoints.kafka_bootstrap
    open_ns = write_namespace(folder, bootstrap)
    locked = write_namespace(folder, bootstrap, producers=["checkout", "order-admin"], deleters=["order-admin"])
    avro = write_namespace(folder, bootstrap, payload={"format": "avro", "schema": AVRO_SCHEMA, "max_bytes": 256})
    closed = write_namespace(folder, bootstrap, producers=(), deleters=())  # says nothing: admits nobody
    tokens = folder / "tokens.yaml"
    tokens.write_text("\n".join(f"{token}: {identity}" for token, identity in TOKENS.items()) + "\n")
    with running_api(bootstrap, [open_ns, locked, avro, closed], tokens_file=tokens) as api:
        yield World(bootstrap, api, open_ns, locked, avro, closed)


def test_write_to_log_is_durable_and_lands_decodable(world: World) -> None:
    before = end_offsets(world.bootstrap, world.open)
    request = write_request(
        world.open.name,
        "order-1",
        Op.UPSERT,
        {"sku": "a-1"},
        targets=["search"],
        sequence=42,
        delay_ms=1500,
        jitter_ms=100,
        original_write_time_us=1_700_000_000_000_000,
    )
    with world.client() as client:
        response = client.write_to_log(request)
    assert response.durable is Durable.TRUE, response.message
    assert grew_by(before, end_offsets(world.bootstrap, world.open)) == 1
    [record] = [r for r in read_log(world.bootstrap, world.open) if r.entry.entry_id == response.entry_id]
    assert (record.partition, record.offset) == (response.partition, response.offset)
    entry = record.entry
    assert record.key == b"order-1"
    assert (entry.namespace, entry.key, entry.op, entry.sequence) == (world.open.name, "order-1", Op.UPSERT, 42)
    assert json.loads(entry.payload) == {"sku": "a-1"}
    assert entry.targets == ("search",)
    assert entry.lifecycle.original_write_time == 1_700_000_000_000_000
    assert (entry.lifecycle.delay_ms, entry.lifecycle.jitter_ms) == (1500, 100)


def test_sequence_defaults_to_the_write_time_and_trace_headers_travel(world: World) -> None:
    channel = grpc.insecure_channel(world.api.target)
    call = channel.unary_unary(messages.WRITE_TO_LOG)
    request = write_request(world.open.name, "k-trace", "DELETE")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    data = call(messages.encode_write_request(request), metadata=(("traceparent", traceparent),), timeout=30)
    response = messages.decode_write_response(data)
    channel.close()
    assert response.durable is Durable.TRUE
    [record] = [r for r in read_log(world.bootstrap, world.open) if r.entry.entry_id == response.entry_id]
    assert record.entry.sequence == record.entry.lifecycle.original_write_time > 0
    assert record.entry.op is Op.DELETE and record.entry.payload == b""
    assert dict(record.entry.headers) == {"traceparent": traceparent}


def test_avro_namespace_accepts_a_matching_record(world: World) -> None:
    from streams.payload import PayloadCodec

    body = PayloadCodec(world.avro.payload).encode({"sku": "x", "qty": 3})
    with world.client() as client:
        assert client.write_to_log(write_request(world.avro.name, "item-1", "UPSERT", body)).durable is Durable.TRUE


def _ok(ns: Namespace, **fields: object) -> WriteRequest:
    return replace(write_request(ns.name, "k", "UPSERT", {"sku": "s"}), **fields)  # type: ignore[arg-type]


# (case id, namespace attribute of World, request fields, token, expected code, expected field)
REFUSALS: list[tuple[str, str, dict[str, object], str | None, grpc.StatusCode, str]] = [
    ("empty key", "open", {"key": ""}, None, grpc.StatusCode.INVALID_ARGUMENT, "key"),
    ("key over 512 bytes", "open", {"key": "é" * 257}, None, grpc.StatusCode.INVALID_ARGUMENT, "key"),
    ("op unspecified", "open", {"op": 0}, None, grpc.StatusCode.INVALID_ARGUMENT, "op"),
    ("op unknown", "open", {"op": 9}, None, grpc.StatusCode.INVALID_ARGUMENT, "op"),
    ("payload not json", "open", {"payload": b"{nope"}, None, grpc.StatusCode.INVALID_ARGUMENT, "payload"),
    ("payload json array", "open", {"payload": b"[1]"}, None, grpc.StatusCode.INVALID_ARGUMENT, "payload"),
    ("upsert without payload", "open", {"payload": b""}, None, grpc.StatusCode.INVALID_ARGUMENT, "payload"),
    ("delete with payload", "open", {"op": 2}, None, grpc.StatusCode.INVALID_ARGUMENT, "payload"),
    (
        "payload over max_bytes",
        "open",
        {"payload": json.dumps({"sku": "x" * 3000}).encode()},
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "payload",
    ),
    ("avro payload garbage", "avro", {"payload": b"\xff\xff\xff"}, None, grpc.StatusCode.INVALID_ARGUMENT, "payload"),
    ("unknown target", "open", {"targets": ("search", "nope")}, None, grpc.StatusCode.INVALID_ARGUMENT, "targets"),
    (
        "negative delay",
        "open",
        {"lifecycle": LifecycleSpec(delay_ms=-1)},
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "lifecycle.delay_ms",
    ),
    (
        "negative jitter",
        "open",
        {"lifecycle": LifecycleSpec(jitter_ms=-5)},
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "lifecycle.jitter_ms",
    ),
    (
        "delay over a week",
        "open",
        {"lifecycle": LifecycleSpec(delay_ms=8 * 24 * 3_600_000)},
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "lifecycle.delay_ms",
    ),
    (
        "write time in nanoseconds",
        "open",
        {"lifecycle": LifecycleSpec(original_write_time_us=1_700_000_000_000_000_000)},
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "lifecycle.original_write_time_us",
    ),
    ("sequence over a long", "open", {"sequence": 2**63}, None, grpc.StatusCode.INVALID_ARGUMENT, "sequence"),
    (
        "idempotency key too long",
        "open",
        {"idempotency_key": "x" * 300},
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "idempotency_key",
    ),
    ("no namespace", "open", {"namespace": ""}, None, grpc.StatusCode.INVALID_ARGUMENT, "namespace"),
    ("unknown namespace", "open", {"namespace": "nosuchns"}, None, grpc.StatusCode.NOT_FOUND, "namespace"),
    ("no token", "locked", {}, None, grpc.StatusCode.UNAUTHENTICATED, "authorization"),
    ("unknown token", "locked", {}, "tok-forged", grpc.StatusCode.UNAUTHENTICATED, "authorization"),
    ("unknown token, open namespace", "open", {}, "tok-forged", grpc.StatusCode.UNAUTHENTICATED, "authorization"),
    ("identity not listed", "locked", {}, "tok-billing", grpc.StatusCode.PERMISSION_DENIED, "authorization"),
    ("closed namespace, no token", "closed", {}, None, grpc.StatusCode.PERMISSION_DENIED, "authorization"),
    ("closed namespace, a token", "closed", {}, "tok-checkout", grpc.StatusCode.PERMISSION_DENIED, "authorization"),
    (
        "a writer's DELETE entry",
        "locked",
        {"op": messages.op_code(Op.DELETE), "payload": b""},
        "tok-checkout",
        grpc.StatusCode.PERMISSION_DENIED,
        "authorization",
    ),
]


@pytest.mark.parametrize(
    ("ns_attr", "fields", "token", "code", "field"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
def test_refusals_carry_their_code_and_write_nothing(
    world: World, ns_attr: str, fields: dict[str, object], token: str | None, code: grpc.StatusCode, field: str
) -> None:
    request = _ok(getattr(world, ns_attr), **fields)
    before = world.offsets()
    with world.client(token) as client, pytest.raises(ApiError) as refused:
        client.write_to_log(request)
    assert refused.value.code == code, refused.value.details
    assert refused.value.field == field
    assert world.offsets() == before


def test_listed_identity_may_write_to_a_locked_namespace(world: World) -> None:
    before = end_offsets(world.bootstrap, world.locked)
    with world.client("tok-checkout") as client:
        assert client.write_to_log(_ok(world.locked)).durable is Durable.TRUE
    assert grew_by(before, end_offsets(world.bootstrap, world.locked)) == 1


def test_deletes_need_the_deleters_grant(world: World) -> None:
    """A producer allowed to write may not delete, in any call; a listed deleter may."""
    delete = _ok(world.locked, op=messages.op_code(Op.DELETE), payload=b"")
    bulk = BulkDeleteRequest(world.locked.name, ("k1", "k2"))
    mixed = BatchRequest(
        world.locked.name,
        (
            BatchEntrySpec("k1", messages.op_code(Op.UPSERT), b'{"sku": "s"}'),
            BatchEntrySpec("k2", messages.op_code(Op.DELETE)),
        ),
    )
    before = world.offsets()
    with world.client("tok-checkout") as writer:
        for call in (
            lambda: writer.bulk_delete(bulk),
            lambda: writer.write_batch(mixed),
            lambda: writer.write_to_log(delete),
        ):
            with pytest.raises(ApiError) as refused:
                call()
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED, refused.value.details
            assert "authorization.deleters" in refused.value.details
    assert world.offsets() == before, "a refused delete wrote something"
    with world.client("tok-admin") as admin:
        assert admin.bulk_delete(bulk).durable is Durable.TRUE
        assert admin.write_to_log(delete).durable is Durable.TRUE
    assert grew_by(before[world.locked.name], end_offsets(world.bootstrap, world.locked)) == 3


def test_malformed_authorization_metadata_is_unauthenticated(world: World) -> None:
    channel = grpc.insecure_channel(world.api.target)
    call = channel.unary_unary(messages.WRITE_TO_LOG)
    before = world.offsets()
    with pytest.raises(grpc.RpcError) as refused:
        call(messages.encode_write_request(_ok(world.open)), metadata=(("authorization", "Basic abc"),), timeout=10)
    channel.close()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert world.offsets() == before


@pytest.mark.parametrize("method", [messages.WRITE_TO_LOG, messages.WRITE_BATCH, messages.BULK_DELETE])
def test_undecodable_request_bytes_are_invalid_argument(world: World, method: str) -> None:
    channel = grpc.insecure_channel(world.api.target)
    before = world.offsets()
    with pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(method)(b"\x0a\xff\xff\xff\xff", timeout=10)
    channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert world.offsets() == before


def test_health_and_reflection(world: World) -> None:
    with world.client() as client:
        assert client.health() == "SERVING"
        assert client.health(messages.SERVICE_NAME) == "SERVING"
    channel = grpc.insecure_channel(world.api.target)
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    channel.close()
    assert messages.SERVICE_NAME in services
    assert "grpc.health.v1.Health" in services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_kafka_timeout_answers_unknown(endpoints: Endpoints, tmp_path: Path) -> None:
    """No broker answers: librdkafka's delivery timeout is a durable=UNKNOWN answer, never an error status."""
    ns = write_namespace(tmp_path, endpoints.kafka_bootstrap)
    dead = f"127.0.0.1:{_free_port()}"
    overrides = {"delivery.timeout.ms": 1500, "socket.connection.setup.timeout.ms": 1000}
    with running_api(dead, [ns], producer_overrides=overrides) as api, WalClient(api.target) as client:
        response = client.write_to_log(write_request(ns.name, "k", "UPSERT", {"sku": "s"}, idempotency_key="ik-1"))
    assert response.durable is Durable.UNKNOWN
    assert "retry" in response.message.lower() or "timed out" in response.message.lower()
    assert response.entry_id


def test_ack_timeout_answers_unknown(endpoints: Endpoints, tmp_path: Path) -> None:
    """Kafka slower than the server's ack timeout: the call answers UNKNOWN in time instead of hanging."""
    ns = write_namespace(tmp_path, endpoints.kafka_bootstrap)
    dead = f"127.0.0.1:{_free_port()}"
    overrides = {"delivery.timeout.ms": 4000}
    with (
        running_api(dead, [ns], producer_overrides=overrides, ack_timeout_s=0.5) as api,
        WalClient(api.target) as client,
    ):
        response = client.write_to_log(write_request(ns.name, "k", "UPSERT", {"sku": "s"}))
    assert response.durable is Durable.UNKNOWN
    assert "0.5s" in response.message
