"""WriteStream against the real Kafka: every entry answered on its own, bad ones refused alone, flow control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest

from connectors.endpoints import Endpoints
from streams.api import messages
from streams.client.grpc import ApiError, AsyncWalClient, WalClient, write_request
from streams.namespaces import Namespace
from streams.ports import Delivery, Durable
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

TOKENS = {"tok-checkout": "checkout", "tok-billing": "billing"}


class World:
    def __init__(self, bootstrap: str, api: ApiHarness, open_ns: Namespace, locked: Namespace) -> None:
        self.bootstrap = bootstrap
        self.api = api
        self.open = open_ns
        self.locked = locked


@pytest.fixture(scope="module")
def world(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("stream-namespaces")
    bootstrap = endpoints.kafka_bootstrap
    open_ns = write_namespace(folder, bootstrap)
    locked = write_namespace(folder, bootstrap, producers=["checkout"], deleters=[])
    tokens = folder / "tokens.yaml"
    tokens.write_text("\n".join(f"{token}: {identity}" for token, identity in TOKENS.items()) + "\n")
    # A small window, so the flow-control test reaches it quickly.
    with running_api(bootstrap, [open_ns, locked], tokens_file=tokens, stream_window=16) as api:
        yield World(bootstrap, api, open_ns, locked)


def _log_by_id(world: World, ns: Namespace) -> dict[str, tuple[int, int]]:
    return {r.entry.entry_id: (r.partition, r.offset) for r in read_log(world.bootstrap, ns)}


def test_many_entries_on_one_stream_each_get_a_durable_answer_where_they_landed(world: World) -> None:
    before = end_offsets(world.bootstrap, world.open)
    with WalClient(world.api.target, timeout_s=60) as client:
        futures = [
            client.submit(write_request(world.open.name, f"s-{i}", "UPSERT", {"sku": f"v{i}"})) for i in range(2000)
        ]
        answers = [f.result(60) for f in futures]
    assert {a.durable for a in answers} == {Durable.TRUE}, answers[:3]
    assert len({a.entry_id for a in answers}) == 2000
    assert grew_by(before, end_offsets(world.bootstrap, world.open)) == 2000
    landed = _log_by_id(world, world.open)
    assert all(landed[a.entry_id] == (a.partition, a.offset) for a in answers)


def test_a_bad_entry_in_the_middle_is_refused_alone_and_the_others_are_written(world: World) -> None:
    before = end_offsets(world.bootstrap, world.open)
    requests = [write_request(world.open.name, f"mid-{i}", "UPSERT", {"sku": str(i)}) for i in range(21)]
    requests[7] = write_request(world.open.name, "mid-7", "UPSERT", {"sku": "x"}, delay_ms=-5)
    requests[10] = write_request(world.open.name, "", "UPSERT", {"sku": "x"})
    requests[13] = write_request("no-such-namespace", "mid-13", "UPSERT", {"sku": "x"})
    requests[16] = write_request(world.open.name, "mid-16", "UPSERT", b"{not json")
    with WalClient(world.api.target, timeout_s=60) as client:
        futures = [client.submit(r) for r in requests]
        outcomes: dict[int, Delivery | ApiError] = {}
        for i, f in enumerate(futures):
            try:
                outcomes[i] = f.result(60)
            except ApiError as exc:
                outcomes[i] = exc
    refused = {i: o for i, o in outcomes.items() if isinstance(o, ApiError)}
    assert sorted(refused) == [7, 10, 13, 16]
    assert refused[7].code is grpc.StatusCode.INVALID_ARGUMENT and refused[7].field == "lifecycle.delay_ms"
    assert refused[10].code is grpc.StatusCode.INVALID_ARGUMENT and refused[10].field == "key"
    assert refused[13].code is grpc.StatusCode.NOT_FOUND and refused[13].field == "namespace"
    assert refused[16].code is grpc.StatusCode.INVALID_ARGUMENT and refused[16].field == "payload"
    written = [o for o in outcomes.values() if isinstance(o, Delivery)]
    assert len(written) == 17 and all(d.durable is Durable.TRUE for d in written)
    assert grew_by(before, end_offsets(world.bootstrap, world.open)) == 17
    keys = {r.entry.key for r in read_log(world.bootstrap, world.open) if r.entry.key.startswith("mid-")}
    assert keys == {f"mid-{i}" for i in range(21)} - {"mid-7", "mid-10", "mid-13", "mid-16"}


def test_each_entry_is_authorized_on_its_own(world: World) -> None:
    before = end_offsets(world.bootstrap, world.locked)
    with WalClient(world.api.target, token="tok-billing", timeout_s=60) as billing:
        refused = billing.submit(write_request(world.locked.name, "k", "UPSERT", {"sku": "x"}))
        allowed = billing.submit(write_request(world.open.name, "k", "UPSERT", {"sku": "x"}))
        with pytest.raises(ApiError) as caught:
            refused.result(60)
        assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert allowed.result(60).durable is Durable.TRUE
    with WalClient(world.api.target, token="tok-checkout", timeout_s=60) as checkout:
        assert checkout.stream_write(write_request(world.locked.name, "k", "UPSERT", {"sku": "y"})).durable is (
            Durable.TRUE
        )
    with WalClient(world.api.target, token="tok-unknown", timeout_s=60) as stranger:
        with pytest.raises(ApiError) as caught:
            stranger.submit(write_request(world.open.name, "k", "UPSERT", {"sku": "z"})).result(60)
        assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert grew_by(before, end_offsets(world.bootstrap, world.locked)) == 1


def test_an_idempotency_key_has_no_second_effect_on_a_stream(world: World) -> None:
    before = end_offsets(world.bootstrap, world.open)
    request = write_request(world.open.name, "idem", "UPSERT", {"sku": "once"}, idempotency_key="stream-key-1")
    with WalClient(world.api.target, timeout_s=60) as client:
        first, second = (client.submit(request) for _ in range(2))
        a, b = first.result(60), second.result(60)
        c = client.stream_write(request)
    assert a.durable is b.durable is c.durable is Durable.TRUE
    assert a.entry_id == b.entry_id == c.entry_id and (a.partition, a.offset) == (c.partition, c.offset)
    assert grew_by(before, end_offsets(world.bootstrap, world.open)) == 1


def test_the_asyncio_client_keeps_many_entries_in_flight_on_one_stream(world: World) -> None:
    async def main() -> list[Delivery]:
        async with AsyncWalClient(world.api.target, timeout_s=60) as client:
            futures = [
                await client.submit(write_request(world.open.name, f"a-{i}", "UPSERT", {"sku": "a"}))
                for i in range(500)
            ]
            return list(await asyncio.gather(*futures))

    before = end_offsets(world.bootstrap, world.open)
    answers = asyncio.run(main())
    assert {a.durable for a in answers} == {Durable.TRUE}
    assert grew_by(before, end_offsets(world.bootstrap, world.open)) == 500
    landed = _log_by_id(world, world.open)
    assert all(landed[a.entry_id] == (a.partition, a.offset) for a in answers)


def test_a_client_that_does_not_read_its_answers_is_slowed_then_served_in_full(world: World) -> None:
    """The server's window (16 entries) holds: with the answers unread, the server stops reading entries once
    the answers fill the transport's buffers, so the log stops growing long before the client's entries run out;
    reading the answers lets everything through."""
    total = 20_000
    payload = {"sku": "p" * 1000}  # ~1 KB entries: the transport's buffers hold only a part of them
    requests = [
        messages.encode_stream_entry(i + 1, write_request(world.open.name, f"fc-{i}", "UPSERT", payload))
        for i in range(total)
    ]

    async def main() -> tuple[int, int, list[messages.StreamAnswer]]:
        # The client's receive window stays at its 64 KiB start (no bandwidth probing), so its unread answers
        # fill it after about a thousand entries instead of after megabytes.
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(world.api.target, options=options) as channel:
            call = channel.stream_stream(messages.WRITE_STREAM)(timeout=300)
            sent = 0

            async def send() -> None:
                nonlocal sent
                for data in requests:
                    await call.write(data)
                    sent += 1
                await call.done_writing()

            sender = asyncio.create_task(send())
            before = end_offsets(world.bootstrap, world.open)
            # Wait until the log stops growing: the same count three times, two seconds apart.
            plateau, readings, deadline = -1, [-1], time.monotonic() + 240
            while time.monotonic() < deadline:
                await asyncio.sleep(2)
                readings.append(grew_by(before, await asyncio.to_thread(end_offsets, world.bootstrap, world.open)))
                if len(set(readings[-3:])) == 1:
                    plateau = readings[-1]
                    break
            stalled_at = sent
            print(f"log stopped growing at {plateau} entries; the client had sent {sent} of {total}")
            answers = [a async for data in call for a in messages.decode_stream_response(data)]
            await sender
            return plateau, stalled_at, answers

    plateau, stalled_at, answers = asyncio.run(main())
    assert 0 < plateau < total / 2, f"the server kept reading unanswered entries: {plateau} of {total} written"
    assert stalled_at < total, "the client's sends never blocked"
    assert len(answers) == total
    assert {a.delivery.durable for a in answers if a.delivery is not None} == {Durable.TRUE}
    assert sorted(a.request_id for a in answers) == list(range(1, total + 1))


def test_reflection_lists_write_stream(world: World) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(world.api.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        service = database.FindFileContainingSymbol(messages.SERVICE_NAME)
        methods = {m.name: m for s in service.service for m in s.method}
    assert "WriteStream" in methods
    assert methods["WriteStream"].client_streaming and methods["WriteStream"].server_streaming


def test_at_shutdown_entries_in_flight_are_answered_and_new_ones_are_sent_back(endpoints: Endpoints) -> None:
    """A stopping server answers what it accepted (TRUE, once Kafka acknowledges) and answers UNAVAILABLE, never
    written, to what arrives on the stream after the stop began, so the client sends those elsewhere."""
    import tempfile
    import threading
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        ns = write_namespace(Path(folder), endpoints.kafka_bootstrap)
        with running_api(endpoints.kafka_bootstrap, [ns]) as api, WalClient(api.target, timeout_s=60) as client:
            release = api.hold_writes()
            early = [client.submit(write_request(ns.name, f"early-{i}", "UPSERT", {"sku": "e"})) for i in range(5)]
            while api.service.limiter.in_flight < 5:  # all five accepted and held before their write
                time.sleep(0.05)
            stopping = threading.Thread(target=api.run, args=(api.running.stop(grace_s=30.0),), kwargs={"timeout": 90})
            stopping.start()
            while not api.service.closing:
                time.sleep(0.05)
            late = client.submit(write_request(ns.name, "late", "UPSERT", {"sku": "l"}))
            with pytest.raises(ApiError) as caught:
                late.result(60)
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE
            release()
            answers = [f.result(60) for f in early]
            client.close()  # half-closes the stream: the server's drain can finish
            stopping.join(90)
            assert not stopping.is_alive()
        assert {a.durable for a in answers} == {Durable.TRUE}
        keys = {r.entry.key for r in read_log(endpoints.kafka_bootstrap, ns)}
        assert keys == {f"early-{i}" for i in range(5)}


def test_over_the_in_flight_limit_an_entry_is_shed_alone_and_counted(endpoints: Endpoints) -> None:
    """Stream entries count against the process's in-flight limit like calls: the ones over it are answered
    RESOURCE_EXHAUSTED (never written) while the stream and the accepted entries go on; the API's metrics
    count each entry by its code."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        ns = write_namespace(Path(folder), endpoints.kafka_bootstrap)
        with running_api(endpoints.kafka_bootstrap, [ns], max_in_flight=2) as api:
            with WalClient(api.target, timeout_s=60) as client:
                release = api.hold_writes()
                futures = [client.submit(write_request(ns.name, f"shed-{i}", "UPSERT", {"sku": "s"})) for i in range(5)]
                shed = []
                for future in futures[2:]:
                    with pytest.raises(ApiError) as caught:
                        future.result(60)
                    shed.append(caught.value.code)
                release()
                accepted = [f.result(60) for f in futures[:2]]
                after = client.stream_write(write_request(ns.name, "shed-after", "UPSERT", {"sku": "s"}))
            registry = api.service.metrics.registry
            calls = {
                s.labels["code"]: s.value
                for m in registry.collect()
                if m.name == "walstream_api_calls"
                for s in m.samples
                if s.name == "walstream_api_calls_total" and s.labels["method"] == "WriteStream"
            }
            shed_count = registry.get_sample_value("walstream_api_shed_total", {"method": "WriteStream"})
            in_flight = registry.get_sample_value("walstream_api_in_flight")
        assert shed == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
        assert [a.durable for a in accepted] == [Durable.TRUE, Durable.TRUE] and after.durable is Durable.TRUE
        assert calls == {"OK": 3, "RESOURCE_EXHAUSTED": 3} and shed_count == 3 and in_flight == 0
        keys = {r.entry.key for r in read_log(endpoints.kafka_bootstrap, ns)}
        assert keys == {"shed-0", "shed-1", "shed-after"}
