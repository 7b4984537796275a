"""WriteStream while the Kafka broker is frozen: the API process's memory stays bounded (the stream's window
slows the client down), and every answer is true to the log: TRUE entries are in it, FALSE ones are not, and an
UNKNOWN one is resolved by sending it again with its idempotency key."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.local.stack import LocalStack, scratch_settings
from streams.api.messages import WriteRequest
from streams.client.grpc import WalClient, write_request
from streams.config import load_settings
from streams.ports import Delivery, Durable
from tests.integration.pipeline import api_process
from tests.integration.test_api_harness import read_log, write_namespace

pytestmark = pytest.mark.integration

FREEZE_S = 10.0


@dataclass
class OwnKafka:
    stack: LocalStack
    bootstrap: str


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[OwnKafka]:
    """A Kafka of this module's own on free ports, so freezing it disturbs no other test."""
    stack = LocalStack(scratch_settings(load_settings().local, False, "walstream-stream-freeze-"), services=["kafka"])
    try:
        stack.up()
        yield OwnKafka(stack, stack.endpoints().kafka_bootstrap)
    finally:
        stack.signal_service("kafka", signal.SIGCONT)
        stack.down()
        shutil.rmtree(stack.settings.stack_dir.parent, ignore_errors=True)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_a_frozen_broker_slows_the_stream_without_growing_memory_and_answers_stay_true(
    own_kafka: OwnKafka, tmp_path: Path
) -> None:
    ns = write_namespace(tmp_path, own_kafka.bootstrap, remove_at_end=False)  # the own Kafka goes at the end
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_BOOTSTRAP": own_kafka.bootstrap,
        "WALSTREAM_NAMESPACE_DIR": str(tmp_path),
        "WALSTREAM_API_ACK_TIMEOUT_S": "4",  # shorter than the freeze: some answers must be UNKNOWN
    }
    sent: list[tuple[str, Future[Delivery]]] = []
    requests: dict[str, WriteRequest] = {}
    payload = {"sku": "x" * 512}
    with api_process(env) as api, WalClient(f"127.0.0.1:{api.port}", timeout_s=120) as client:

        def write_for(seconds: float) -> None:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                key = uuid.uuid4().hex
                requests[key] = write_request(ns.name, key, "UPSERT", payload, idempotency_key=key)
                sent.append((key, client.submit(requests[key])))

        write_for(3.0)  # warm: the process's memory settles at its working size
        baseline = _rss_bytes(api.pid)
        peak = baseline
        frozen_at = len(sent)
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.is_set():
                peak = max(peak, _rss_bytes(api.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        frozen = own_kafka.stack.signal_service("kafka", signal.SIGSTOP)
        assert frozen, "the broker was not running"
        thaw = threading.Timer(FREEZE_S, lambda: own_kafka.stack.signal_service("kafka", signal.SIGCONT))
        thaw.start()
        try:
            write_for(FREEZE_S + 8.0)  # through the freeze and on after it
        finally:
            thaw.join()
        answers: dict[str, Delivery] = {key: future.result(120) for key, future in sent}
        sampling.set()
        sampler.join()
        during = len(sent) - frozen_at
        print(
            f"API RSS: {baseline / 2**20:.0f} MiB before the freeze, peak {peak / 2**20:.0f} MiB; "
            f"{frozen_at} entries before it, {during} from its start on"
        )
        # Resolve every UNKNOWN the way a client does: the very same request (its idempotency key and write
        # time) sent again.
        unknown = [key for key, d in answers.items() if d.durable is Durable.UNKNOWN]
        resent = {key: client.write(requests[key], attempts=5) for key in unknown}
    counts = {d: sum(1 for a in answers.values() if a.durable is d) for d in Durable}
    print(f"answers: {counts[Durable.TRUE]} TRUE, {counts[Durable.FALSE]} FALSE, {counts[Durable.UNKNOWN]} UNKNOWN")
    assert peak - baseline < 150 * 2**20, f"the API grew by {(peak - baseline) / 2**20:.0f} MiB during the freeze"
    assert counts[Durable.UNKNOWN] > 0, "the freeze outlasted the ack timeout, so some answers must be UNKNOWN"
    assert counts[Durable.TRUE] > frozen_at, "writes went on after the broker came back"

    in_log: dict[str, set[str]] = {}
    for record in read_log(own_kafka.bootstrap, ns, timeout_s=60):
        in_log.setdefault(record.entry.key, set()).add(record.entry.entry_id)
    for key, delivery in answers.items():
        if delivery.durable is Durable.TRUE:
            assert in_log.get(key) == {delivery.entry_id}, key
        elif delivery.durable is Durable.FALSE:
            assert key not in in_log, key
    for key, delivery in resent.items():
        assert delivery.durable is Durable.TRUE, (key, delivery.message)
        # However many times it landed, it is one entry: the same id every time.
        assert in_log.get(key) == {delivery.entry_id}, key
