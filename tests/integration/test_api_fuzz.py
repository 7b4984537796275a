"""Fuzzes the API's request fields: never an internal error, never a partial write, a refusal never writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connectors.endpoints import Endpoints
from streams.api import messages
from streams.api.messages import BatchEntrySpec, BatchRequest, BatchResponse, LifecycleSpec, WriteRequest
from streams.client.grpc import ApiError, WalClient
from streams.namespaces import Namespace
from streams.ports import Delivery, Durable
from tests.integration.test_api_harness import (
    ApiHarness,
    drop_created_topics,  # noqa: F401 - an autouse fixture
    end_offsets,
    grew_by,
    running_api,
    write_namespace,
)

pytestmark = pytest.mark.integration
T = TypeVar("T")

#: Codes a refusal may carry; anything else (INTERNAL, UNKNOWN, ...) is a bug.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
TOKENS = {"tok-a": "alpha", "tok-b": "beta"}


@dataclass
class Fuzz:
    bootstrap: str
    api: ApiHarness
    open: Namespace
    locked: Namespace
    clients: dict[str | None, WalClient]
    #: (namespace, identity, idempotency key) -> the first answer, to tell retries from new writes.
    answers: dict[tuple[str, str | None, str], Delivery] = field(default_factory=dict)
    batch_answers: dict[tuple[str, str | None, str], BatchResponse] = field(default_factory=dict)

    def offsets(self) -> dict[str, dict[int, int]]:
        return {ns.name: end_offsets(self.bootstrap, ns) for ns in (self.open, self.locked)}


@pytest.fixture(scope="module")
def fuzz(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    folder = tmp_path_factory.mktemp("api-fuzz")
    bootstrap = endpoints.kafka_bootstrap
    open_ns = write_namespace(folder, bootstrap)
    locked = write_namespace(folder, bootstrap, producers=["alpha"])
    tokens = folder / "tokens.yaml"
    tokens.write_text("".join(f"{t}: {i}\n" for t, i in TOKENS.items()))
    with running_api(bootstrap, [open_ns, locked], tokens_file=tokens) as api:
        clients = {token: WalClient(api.target, token=token) for token in (None, "tok-a", "tok-b", "tok-zzz")}
        yield Fuzz(bootstrap, api, open_ns, locked, clients)
        for client in clients.values():
            client.close()


# UTF-8 text only: protobuf strings cannot carry lone surrogates, so the client could not even send those.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
int64 = st.integers(-(2**63), 2**63 - 1)
uint64 = st.integers(0, 2**64 - 1)
small_or_edge = st.one_of(st.integers(-3, 3), st.integers(0, 10**7), int64)
valid_json = st.dictionaries(st.sampled_from(["sku", "qty", "x"]), st.one_of(st.integers(), text), max_size=3).map(
    lambda d: json.dumps(d).encode()
)
invalid_payloads = st.one_of(
    st.binary(max_size=64), st.just(b""), st.just(json.dumps({"sku": "y" * 3000}).encode()), st.just(b"[]")
)


def mostly(valid: st.SearchStrategy[T], invalid: st.SearchStrategy[T], odds: int = 9) -> st.SearchStrategy[T]:
    """``odds`` valid values for one invalid, so many examples get past the first checks and reach deeper ones."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda ok: valid if ok else invalid)


payloads = mostly(valid_json, invalid_payloads)
lifecycles = st.builds(
    LifecycleSpec,
    original_write_time_us=mostly(st.one_of(st.just(0), st.integers(1, 1_700_000_000_000_000)), uint64),
    delay_ms=mostly(st.integers(0, 10**6), int64),
    jitter_ms=mostly(st.integers(0, 10**6), int64),
)
targets = st.lists(mostly(st.sampled_from(["primary", "search"]), text), max_size=3).map(tuple)
ops = mostly(st.sampled_from([1, 2]), st.integers(-(2**31), 2**31 - 1))
keys = mostly(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20), st.sampled_from(["", "k" * 600])
)
idempotency_keys = mostly(st.one_of(st.just(""), st.uuids().map(str)), text)
sequences = mostly(st.one_of(st.none(), st.integers(0, 2**63 - 1)), uint64)


def _namespace_names(f: Fuzz) -> st.SearchStrategy[str]:
    return mostly(st.sampled_from([f.open.name, f.locked.name]), st.one_of(st.sampled_from(["", "missing"]), text))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_write_to_log_fuzz(fuzz: Fuzz, data: st.DataObject) -> None:
    request = WriteRequest(
        namespace=data.draw(_namespace_names(fuzz), "namespace"),
        key=data.draw(keys, "key"),
        op=(op := data.draw(ops, "op")),
        payload=data.draw(mostly(st.just(b""), payloads) if op == 2 else payloads, "payload"),
        targets=data.draw(targets, "targets"),
        idempotency_key=data.draw(idempotency_keys, "idempotency_key"),
        sequence=data.draw(sequences, "sequence"),
        lifecycle=data.draw(lifecycles, "lifecycle"),
    )
    token = data.draw(mostly(st.sampled_from(["tok-a", None]), st.sampled_from(["tok-b", "tok-zzz"])), "token")
    before = fuzz.offsets()
    try:
        response = fuzz.clients[token].write_to_log(request)
    except ApiError as exc:
        event(f"refused {exc.code.name} {exc.field}")
        assert exc.code in REFUSALS, f"{exc.code.name}: {exc.details}"
        assert fuzz.offsets() == before, "a refused call wrote something"
        return
    assert response.durable is Durable.TRUE, response.message
    after = fuzz.offsets()
    grown = sum(grew_by(before[name], after[name]) for name in after)
    scope = (request.namespace, TOKENS.get(token or ""), request.idempotency_key)
    if request.idempotency_key and scope in fuzz.answers:
        event("replayed")
        assert response == fuzz.answers[scope], "a retry must get the first call's answer"
        assert grown == 0, "a retry with the same idempotency key wrote again"
        return
    event("written")
    fuzz.answers[scope] = response
    assert grown == 1


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_write_batch_fuzz_is_all_or_nothing(fuzz: Fuzz, data: st.DataObject) -> None:
    upsert = st.builds(
        BatchEntrySpec,
        key=mostly(st.sampled_from(["a", "b", "c", "d", "e", "f"]), text, odds=30),
        op=mostly(st.just(1), st.sampled_from([0, 2, 7]), odds=30),
        payload=mostly(valid_json, invalid_payloads, odds=30),
        targets=st.lists(mostly(st.sampled_from(["primary", "search"]), text, odds=30), max_size=2).map(tuple),
        sequence=mostly(st.one_of(st.none(), st.integers(0, 2**63 - 1)), uint64, odds=30),
        lifecycle=mostly(st.just(LifecycleSpec()), lifecycles, odds=30),
    )
    delete = st.builds(BatchEntrySpec, key=st.sampled_from(["a", "g"]), op=st.just(2))
    entry = mostly(upsert, delete, odds=3)
    request = BatchRequest(
        namespace=data.draw(mostly(st.sampled_from([fuzz.open.name, fuzz.locked.name]), st.just("missing"))),
        entries=tuple(data.draw(mostly(st.lists(entry, min_size=1, max_size=6), st.just([])))),
        idempotency_key=data.draw(st.one_of(st.just(""), st.uuids().map(str))),
        original_write_time_us=data.draw(mostly(st.just(0), uint64)),
    )
    token = data.draw(mostly(st.just("tok-a"), st.sampled_from([None, "tok-b"])))
    before = fuzz.offsets()
    try:
        response = fuzz.clients[token].write_batch(request)
    except ApiError as exc:
        event(f"refused {exc.code.name}")
        assert exc.code in REFUSALS, f"{exc.code.name}: {exc.details}"
        assert fuzz.offsets() == before, "a refused batch wrote something"
        return
    assert response.durable is Durable.TRUE, response.message
    assert len(response.entries) == len(request.entries)
    after = fuzz.offsets()
    scope = (request.namespace, TOKENS.get(token or ""), request.idempotency_key)
    if request.idempotency_key and scope in fuzz.batch_answers:
        event("replayed")
        assert response == fuzz.batch_answers[scope], "a retry must get the first call's answer"
        assert after == before, "a retried batch wrote again"
        return
    event("committed")
    fuzz.batch_answers[scope] = response
    # Every entry, plus one commit marker per partition the transaction touched.
    partitions = {(ack.partition) for ack in response.entries}
    assert sum(grew_by(before[n], after[n]) for n in after) == len(request.entries) + len(partitions)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200), method=st.sampled_from([messages.WRITE_TO_LOG, messages.WRITE_BATCH]))
def test_raw_bytes_never_cause_an_internal_error(fuzz: Fuzz, raw: bytes, method: str) -> None:
    channel = grpc.insecure_channel(fuzz.api.target)
    try:
        channel.unary_unary(method)(raw, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in REFUSALS, exc  # type: ignore[attr-defined]
    finally:
        channel.close()
