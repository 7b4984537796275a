"""Idempotent retries, load shedding and graceful shutdown of the API server against the real Kafka."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from connectors.endpoints import Endpoints
from streams.client.grpc import ApiError, WalClient, write_request
from streams.namespaces import Namespace
from streams.ports import Durable
from tests.integration.test_api_harness import (
    ApiHarness,
    drop_created_topics,  # noqa: F401 - an autouse fixture
    end_offsets,
    grew_by,
    read_log,
    running_api,
    write_namespace,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def namespace(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Namespace:
    return write_namespace(tmp_path_factory.mktemp("api-resilience"), endpoints.kafka_bootstrap)


@pytest.fixture(scope="module")
def api(endpoints: Endpoints, namespace: Namespace) -> Iterator[ApiHarness]:
    with running_api(endpoints.kafka_bootstrap, [namespace]) as harness:
        yield harness


def _wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# -- idempotency -------------------------------------------------------------------------------------------------------


def test_retry_with_the_same_idempotency_key_writes_once(
    api: ApiHarness, namespace: Namespace, endpoints: Endpoints
) -> None:
    request = write_request(namespace.name, "acct-1", "UPSERT", {"sku": "a"}, idempotency_key="pay-001")
    before = end_offsets(endpoints.kafka_bootstrap, namespace)
    with WalClient(api.target) as client:
        first = client.write_to_log(request)
        retries = [client.write_to_log(request) for _ in range(3)]
    assert first.durable is Durable.TRUE
    assert all(r == first for r in retries)
    assert grew_by(before, end_offsets(endpoints.kafka_bootstrap, namespace)) == 1
    matching = [r for r in read_log(endpoints.kafka_bootstrap, namespace) if r.entry.entry_id == first.entry_id]
    assert len(matching) == 1
    assert matching[0].entry.idempotency_key == "pay-001"


def test_concurrent_duplicates_write_once(api: ApiHarness, namespace: Namespace, endpoints: Endpoints) -> None:
    request = write_request(namespace.name, "acct-2", "UPSERT", {"sku": "b"}, idempotency_key="pay-002")
    before = end_offsets(endpoints.kafka_bootstrap, namespace)
    with WalClient(api.target) as client, concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _i: client.write_to_log(request), range(16)))
    assert {a.durable for a in answers} == {Durable.TRUE}
    assert len(set(answers)) == 1
    assert grew_by(before, end_offsets(endpoints.kafka_bootstrap, namespace)) == 1


def test_same_key_with_a_different_request_is_refused(
    api: ApiHarness, namespace: Namespace, endpoints: Endpoints
) -> None:
    first = write_request(namespace.name, "acct-3", "UPSERT", {"sku": "c"}, idempotency_key="pay-003")
    other = write_request(namespace.name, "acct-3", "UPSERT", {"sku": "DIFFERENT"}, idempotency_key="pay-003")
    with WalClient(api.target) as client:
        assert client.write_to_log(first).durable is Durable.TRUE
        before = end_offsets(endpoints.kafka_bootstrap, namespace)
        with pytest.raises(ApiError) as refused:
            client.write_to_log(other)
    assert (refused.value.code, refused.value.field) == (grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key")
    assert end_offsets(endpoints.kafka_bootstrap, namespace) == before


def test_after_a_restart_a_retry_repeats_the_same_entry(
    endpoints: Endpoints, namespace: Namespace, tmp_path: Path
) -> None:
    """The cache does not survive a restart: the retry is written again, but as the very same entry (id and
    sequence), which the workers apply as a duplicate, i.e. not at all."""
    request = write_request(namespace.name, "acct-4", "UPSERT", {"sku": "d"}, idempotency_key="pay-004")
    answers = []
    for _restart in range(2):
        with running_api(endpoints.kafka_bootstrap, [namespace]) as fresh, WalClient(fresh.target) as client:
            answers.append(client.write_to_log(request))
    assert [a.durable for a in answers] == [Durable.TRUE, Durable.TRUE]
    assert answers[0].entry_id == answers[1].entry_id
    copies = [
        r.entry for r in read_log(endpoints.kafka_bootstrap, namespace) if r.entry.entry_id == answers[0].entry_id
    ]
    assert len(copies) == 2
    assert copies[0] == copies[1]


# -- load shedding -----------------------------------------------------------------------------------------------------


def test_calls_over_the_in_flight_limit_are_shed(endpoints: Endpoints, namespace: Namespace) -> None:
    bootstrap = endpoints.kafka_bootstrap
    with running_api(bootstrap, [namespace], max_in_flight=2) as small, WalClient(small.target) as client:
        release = small.hold_writes()
        before = end_offsets(bootstrap, namespace)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = [
                pool.submit(client.write_to_log, write_request(namespace.name, f"held-{i}", "UPSERT", {"sku": "h"}))
                for i in range(2)
            ]
            _wait_for(lambda: small.service.limiter.in_flight == 2)
            with pytest.raises(ApiError) as shed:
                client.write_to_log(write_request(namespace.name, "shed", "UPSERT", {"sku": "x"}))
            # Answered while both slots were still held: the call was shed, not queued behind them.
            assert not any(f.done() for f in held), "shedding must answer at once, not queue"
            assert shed.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert end_offsets(bootstrap, namespace) == before
            release()
            assert [f.result(30).durable for f in held] == [Durable.TRUE, Durable.TRUE]
        assert grew_by(before, end_offsets(bootstrap, namespace)) == 2
        assert small.service.limiter.shed == 1


def test_saturation_sheds_some_and_stores_exactly_the_acknowledged(endpoints: Endpoints, namespace: Namespace) -> None:
    bootstrap = endpoints.kafka_bootstrap
    with running_api(bootstrap, [namespace], max_in_flight=3) as small, WalClient(small.target) as client:
        before = end_offsets(bootstrap, namespace)

        def one(i: int) -> str:
            try:
                return client.write_to_log(write_request(namespace.name, f"sat-{i}", "UPSERT", {"sku": "s"})).durable
            except ApiError as exc:
                return exc.code.name

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(one, range(300)))
        assert set(outcomes) <= {Durable.TRUE, "RESOURCE_EXHAUSTED"}
        assert "RESOURCE_EXHAUSTED" in outcomes
        assert grew_by(before, end_offsets(bootstrap, namespace)) == outcomes.count(Durable.TRUE)


# -- graceful shutdown -------------------------------------------------------------------------------------------------


def test_shutdown_drains_calls_in_flight_and_flushes(endpoints: Endpoints, namespace: Namespace) -> None:
    bootstrap = endpoints.kafka_bootstrap
    before = end_offsets(bootstrap, namespace)
    with running_api(bootstrap, [namespace]) as server:
        client = WalClient(server.target)
        release = server.hold_writes()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.write_to_log, write_request(namespace.name, "last", "UPSERT", {"sku": "l"}))
            _wait_for(lambda: server.service.limiter.in_flight == 1)
            stopping = asyncio.run_coroutine_threadsafe(server.running.stop(grace_s=20), server.loop)
            time.sleep(0.3)
            with pytest.raises(ApiError) as refused, WalClient(server.target) as late:
                late.write_to_log(write_request(namespace.name, "too-late", "UPSERT", {"sku": "t"}), timeout_s=5)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            release()
            answer = pending.result(30)
            assert answer.durable is Durable.TRUE
            assert stopping.result(60) == 0
        client.close()
    assert grew_by(before, end_offsets(bootstrap, namespace)) == 1


def test_async_client_with_retry_helper(api: ApiHarness, namespace: Namespace, endpoints: Endpoints) -> None:
    from streams.client.grpc import AsyncWalClient, with_idempotency_key

    async def scenario() -> list[Durable]:
        async with AsyncWalClient(api.target) as client:
            assert await client.health() == "SERVING"
            requests = [
                with_idempotency_key(write_request(namespace.name, f"async-{i}", "UPSERT", {"sku": str(i)}))
                for i in range(50)
            ]
            answers = await asyncio.gather(*(client.write(r, attempts=3) for r in requests))
            again = await asyncio.gather(*(client.write(r) for r in requests))
            assert again == answers
            return [a.durable for a in answers]

    before = end_offsets(endpoints.kafka_bootstrap, namespace)
    assert asyncio.run(scenario()) == [Durable.TRUE] * 50
    assert grew_by(before, end_offsets(endpoints.kafka_bootstrap, namespace)) == 50


def test_retrying_without_an_idempotency_key_is_refused_by_the_client(api: ApiHarness, namespace: Namespace) -> None:
    with WalClient(api.target) as client, pytest.raises(ValueError, match="idempotency key"):
        client.write(write_request(namespace.name, "k", "UPSERT", {"sku": "s"}), attempts=2)
