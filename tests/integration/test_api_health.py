"""The API's /readyz and /healthz tell the truth: not ready before gRPC listens or while Kafka does not answer,
unhealthy once Kafka stayed away past WALSTREAM_API_KAFKA_UNREACHABLE_S, and both fine again after it is back.
Kafka's outages are of a Kafka of this module's own, frozen by its pid; the shared stack is never touched."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.local.stack import LocalStack
from streams.api.health import ApiHealth
from streams.client.grpc import WalClient, write_request
from streams.config import Settings, StackMode
from streams.health import HealthServer
from streams.metrics import Metrics
from streams.namespaces import Namespace, load_namespace
from streams.ports import Durable
from streams.worker.targets import topic_specs
from tests.integration.pipeline import api_process, free_port, namespace_document, own_stack, wait_until
from tests.integration.test_api_harness import (
    drop_created_topics,  # noqa: F401 - an autouse fixture
    running_api,
    write_namespace,
)

pytestmark = pytest.mark.integration

#: Short enough for a test, long enough that a frozen Kafka shows readiness failing well before liveness.
UNREACHABLE_S = 6


def _say(message: str) -> None:
    print(f"[own kafka] {message}", file=sys.stderr, flush=True)


def get(port: int, path: str) -> tuple[int, str]:
    """Status and body of the API's HTTP endpoint."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def answers(port: int, path: str, status: int) -> bool:
    return get(port, path)[0] == status


def sample(port: int, name: str, **labels: str) -> float | None:
    """One sample of the /metrics at ``port``, None when it is not there."""
    for family in text_string_to_metric_families(get(port, "/metrics")[1]):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.fixture(scope="module")
def own_kafka(settings: Settings) -> Iterator[LocalStack]:
    if settings.mode is not StackMode.LOCAL:
        pytest.skip(f"a Kafka of the test's own needs the local mode, not {settings.mode.value}")
    with own_stack(settings.local, "walstream-apihealth-", services=["kafka"], progress=_say) as stack:
        yield stack


#: The folder of the module's namespace on its own Kafka.
_FOLDER = "api-health-ns"


@pytest.fixture(scope="module")
def own_namespace(own_kafka: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Namespace:
    """A namespace whose topics live on the module's own Kafka (and go with it)."""
    path = tmp_path_factory.mktemp(_FOLDER, numbered=False) / "health.yaml"
    path.write_text(yaml.safe_dump(namespace_document("api_health", partitions=2)), encoding="utf-8")
    namespace = load_namespace(path)
    KafkaAdmin(own_kafka.endpoints().kafka_bootstrap).ensure_topics(topic_specs(namespace))
    return namespace


@pytest.fixture
def env(own_kafka: LocalStack, own_namespace: Namespace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What `walstream api` needs to serve the namespace from the module's own Kafka."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_BOOTSTRAP": own_kafka.endpoints().kafka_bootstrap,
        "WALSTREAM_NAMESPACE_DIR": str(tmp_path_factory.getbasetemp() / _FOLDER),
        "WALSTREAM_API_KAFKA_UNREACHABLE_S": str(UNREACHABLE_S),
    }


def _write(port: int, namespace: Namespace, key: str) -> Durable:
    with WalClient(f"127.0.0.1:{port}") as client:
        return client.write_to_log(write_request(namespace.name, key, "UPSERT", {"color": "red", "qty": 1})).durable


def test_readyz_is_503_until_grpc_listens_then_calls_are_counted(endpoints: Endpoints, tmp_path: Path) -> None:
    namespace = write_namespace(tmp_path, endpoints.kafka_bootstrap)
    metrics = Metrics()
    health = ApiHealth(kafka_unreachable_s=60)
    http = HealthServer(metrics, health.live, health.ready, 0).start()
    try:
        status, body = get(http.port, "/readyz")
        assert status == 503 and json.loads(body)["listening"] is False
        assert answers(http.port, "/healthz", 200)
        with running_api(endpoints.kafka_bootstrap, [namespace], metrics=metrics) as api:
            health.listening(api.running.kafka)
            wait_until(lambda: answers(http.port, "/readyz", 200), 60, "/readyz 200 once gRPC listens")
            assert json.loads(get(http.port, "/readyz")[1]) == {
                "ok": True,
                "listening": True,
                "draining": False,
                "kafka": "up",
            }
            assert sample(http.port, "walstream_api_kafka_up") == 1
            with WalClient(api.target) as client:
                request = write_request(namespace.name, "k1", "UPSERT", {"sku": "a"})
                assert client.write_to_log(request).durable is Durable.TRUE
            calls = sample(http.port, "walstream_api_calls_total", method="WriteToLog", code="OK")
            assert calls == 1
    finally:
        http.stop()


def test_an_outage_turns_readiness_then_liveness_and_both_recover(
    own_kafka: LocalStack, own_namespace: Namespace, env: dict[str, str]
) -> None:
    metrics_port = free_port()
    with api_process(env, "--metrics-port", str(metrics_port)) as api:
        wait_until(lambda: answers(metrics_port, "/readyz", 200), 60, "/readyz 200 with Kafka up")
        assert answers(metrics_port, "/healthz", 200)
        assert _write(api.port, own_namespace, "before") is Durable.TRUE
        own_kafka.signal_service("kafka", signal.SIGSTOP)
        try:
            wait_until(lambda: answers(metrics_port, "/readyz", 503), 60, "/readyz 503 with Kafka frozen")
            assert json.loads(get(metrics_port, "/readyz")[1])["kafka"] == "unreachable"
            assert sample(metrics_port, "walstream_api_kafka_up") == 0
            wait_until(lambda: answers(metrics_port, "/healthz", 503), 90, "/healthz 503 past the limit")
            assert "Kafka not reached" in json.loads(get(metrics_port, "/healthz")[1])["reason"]
        finally:
            own_kafka.signal_service("kafka", signal.SIGCONT)
        wait_until(lambda: answers(metrics_port, "/readyz", 200), 120, "/readyz 200 after Kafka is back")
        wait_until(lambda: answers(metrics_port, "/healthz", 200), 60, "/healthz 200 after Kafka is back")
        assert sample(metrics_port, "walstream_api_kafka_up") == 1
        assert _write(api.port, own_namespace, "after") is Durable.TRUE


def test_an_api_started_while_kafka_is_away_is_not_ready_until_it_answers(
    own_kafka: LocalStack, own_namespace: Namespace, env: dict[str, str]
) -> None:
    metrics_port = free_port()
    own_kafka.signal_service("kafka", signal.SIGSTOP)
    try:
        # The start-up access check waits for Kafka for a while, then the server listens all the same.
        with api_process(env, "--metrics-port", str(metrics_port)) as api:
            status, body = get(metrics_port, "/readyz")
            assert status == 503 and json.loads(body)["kafka"] != "up"
            wait_until(lambda: answers(metrics_port, "/healthz", 503), 90, "/healthz 503: Kafka never reached")
            own_kafka.signal_service("kafka", signal.SIGCONT)
            wait_until(lambda: answers(metrics_port, "/readyz", 200), 120, "/readyz 200 once Kafka answers")
            wait_until(lambda: answers(metrics_port, "/healthz", 200), 60, "/healthz 200 once Kafka answers")
            assert _write(api.port, own_namespace, "late") is Durable.TRUE
    finally:
        own_kafka.signal_service("kafka", signal.SIGCONT)
