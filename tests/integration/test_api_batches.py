"""WriteBatch is all-or-nothing for read_committed readers; BulkDelete writes one delayed DELETE per key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from connectors.endpoints import Endpoints
from connectors.kafka.transactions import fail_after
from streams.api.messages import BatchEntrySpec, BatchRequest, BulkDeleteRequest, LifecycleSpec
from streams.client.grpc import ApiError, WalClient
from streams.model import Op
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
def setup(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiHarness, Namespace]]:
    ns = write_namespace(tmp_path_factory.mktemp("api-batches"), endpoints.kafka_bootstrap, partitions=4)
    with running_api(endpoints.kafka_bootstrap, [ns], transactional_producers=2) as api:
        yield api, ns


def _batch(ns: Namespace, size: int, tag: str, idempotency_key: str = "") -> BatchRequest:
    entries = tuple(
        BatchEntrySpec(f"{tag}-{i}", 1, json.dumps({"sku": f"{tag}-{i}"}).encode(), lifecycle=LifecycleSpec(delay_ms=i))
        for i in range(size)
    )
    return BatchRequest(ns.name, entries, idempotency_key)


def test_committed_batch_is_fully_visible_in_order(setup: tuple[ApiHarness, Namespace], endpoints: Endpoints) -> None:
    api, ns = setup
    with WalClient(api.target) as client:
        response = client.write_batch(_batch(ns, 12, "ok"))
    assert response.durable is Durable.TRUE, response.message
    assert len(response.entries) == 12
    visible = {r.entry.entry_id: r for r in read_log(endpoints.kafka_bootstrap, ns)}
    mine = [visible[ack.entry_id] for ack in response.entries]
    assert len({r.partition for r in mine}) > 1, "the batch should span several partitions"
    assert [(r.partition, r.offset) for r in mine] == [(a.partition, a.offset) for a in response.entries]
    for index, record in enumerate(mine):
        assert record.entry.batch is not None
        assert (record.entry.batch.id, record.entry.batch.index, record.entry.batch.count) == (
            response.batch_id,
            index,
            12,
        )
        assert record.entry.key == f"ok-{index}"
        assert record.entry.lifecycle.delay_ms == index
    sequences = [r.entry.sequence for r in mine]
    assert sequences == sorted(sequences) and len(set(sequences)) == 12


def test_batch_failing_part_way_is_invisible(setup: tuple[ApiHarness, Namespace], endpoints: Endpoints) -> None:
    api, ns = setup
    bootstrap = endpoints.kafka_bootstrap
    before = end_offsets(bootstrap, ns)
    api.service.batch_fault = fail_after(3)
    try:
        with WalClient(api.target) as client:
            response = client.write_batch(_batch(ns, 6, "doomed"))
    finally:
        api.service.batch_fault = None
    assert response.durable is Durable.FALSE
    assert "injected failure" in response.message and response.entries == ()
    # The first three entries really reached the log (plus the abort markers) ...
    assert grew_by(before, end_offsets(bootstrap, ns)) >= 3
    raw = [r for r in read_log(bootstrap, ns, committed_only=False) if r.entry.key.startswith("doomed-")]
    assert sorted(r.entry.key for r in raw) == ["doomed-0", "doomed-1", "doomed-2"]
    # ... but a read_committed reader sees none of them.
    assert [r for r in read_log(bootstrap, ns) if r.entry.key.startswith("doomed-")] == []
    # The producer slot is healthy again: the next batch commits.
    with WalClient(api.target) as client:
        assert client.write_batch(_batch(ns, 3, "after")).durable is Durable.TRUE


def test_batch_with_one_invalid_entry_writes_nothing(setup: tuple[ApiHarness, Namespace], endpoints: Endpoints) -> None:
    api, ns = setup
    good = _batch(ns, 4, "mixed")
    bad = BatchRequest(ns.name, (*good.entries[:2], BatchEntrySpec("", 1, b'{"sku":"x"}'), *good.entries[2:]))
    before = end_offsets(endpoints.kafka_bootstrap, ns)
    with WalClient(api.target) as client, pytest.raises(ApiError) as refused:
        client.write_batch(bad)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == "entries[2].key"
    assert end_offsets(endpoints.kafka_bootstrap, ns) == before


def test_batch_retry_with_idempotency_key_writes_once(
    setup: tuple[ApiHarness, Namespace], endpoints: Endpoints
) -> None:
    api, ns = setup
    request = _batch(ns, 3, "idem", idempotency_key="batch-key-1")
    with WalClient(api.target) as client:
        first = client.write_batch(request)
        before = end_offsets(endpoints.kafka_bootstrap, ns)
        second = client.write_batch(request)
    assert first.durable is Durable.TRUE
    assert second == first
    assert end_offsets(endpoints.kafka_bootstrap, ns) == before


def test_bulk_delete_spreads_deletes_and_retries_are_free(
    setup: tuple[ApiHarness, Namespace], endpoints: Endpoints
) -> None:
    api, ns = setup
    keys = tuple(f"gone-{i}" for i in range(40))
    request = BulkDeleteRequest(
        ns.name, keys, targets=("primary",), delay_ms=1000, spread_ms=60_000, jitter_ms=250, idempotency_key="bulk-1"
    )
    before = end_offsets(endpoints.kafka_bootstrap, ns)
    with WalClient(api.target) as client:
        response = client.bulk_delete(request)
        again = client.bulk_delete(request)
    assert response.durable is Durable.TRUE and response.stored == 40
    assert again == response
    assert grew_by(before, end_offsets(endpoints.kafka_bootstrap, ns)) == 40
    by_id = {r.entry.entry_id: r.entry for r in read_log(endpoints.kafka_bootstrap, ns)}
    deletes = [by_id[ack.entry_id] for ack in response.entries]
    assert [d.key for d in deletes] == list(keys)
    assert all(d.op is Op.DELETE and d.payload == b"" and d.targets == ("primary",) for d in deletes)
    delays = [d.lifecycle.delay_ms for d in deletes]
    assert all(1000 <= delay <= 61_000 for delay in delays)
    assert len(set(delays)) > 30, "the deletes should be spread, not bunched"
    assert {d.lifecycle.jitter_ms for d in deletes} == {250}
    assert len({d.sequence for d in deletes}) == 1


def test_bulk_delete_refusals_write_nothing(setup: tuple[ApiHarness, Namespace], endpoints: Endpoints) -> None:
    api, ns = setup
    before = end_offsets(endpoints.kafka_bootstrap, ns)
    cases = [
        (BulkDeleteRequest(ns.name, ()), "keys"),
        (BulkDeleteRequest(ns.name, ("a", "b", "a")), "keys[2]"),
        (BulkDeleteRequest(ns.name, ("a", "")), "keys[1]"),
        (BulkDeleteRequest(ns.name, ("a",), spread_ms=-1), "spread_ms"),
        (BulkDeleteRequest(ns.name, ("a",), targets=("nope",)), "targets"),
    ]
    with WalClient(api.target) as client:
        for request, field in cases:
            with pytest.raises(ApiError) as refused:
                client.bulk_delete(request)
            assert (refused.value.code, refused.value.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    assert end_offsets(endpoints.kafka_bootstrap, ns) == before


def test_transactions_unavailable_is_a_false_answer(endpoints: Endpoints, tmp_path: Path) -> None:
    """No broker: the batch cannot even start a transaction, so it is definitely not written (FALSE)."""
    ns = write_namespace(tmp_path, endpoints.kafka_bootstrap)
    with running_api("127.0.0.1:9", [ns], transaction_timeout_s=1.0) as api, WalClient(api.target) as client:
        response = client.write_batch(_batch(ns, 2, "nobroker"))
    assert response.durable is Durable.FALSE
    assert "transactions unavailable" in response.message
