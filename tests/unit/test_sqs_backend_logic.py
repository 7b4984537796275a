"""The pure parts of the SQS backend: the namespace's backend field, queue names, delays per message, the settings,
and the in-memory key state."""

from __future__ import annotations

import asyncio

import pytest

from streams import topics
from streams.config import ConfigError, load_settings
from streams.core.schedule import queue_delay_s
from streams.namespaces import NamespaceError, parse_namespace
from streams.ports import Durable
from streams.worker.sqs_followups import QueueTable


def _doc(**overrides: object) -> dict[str, object]:
    return {"name": "jobs", "targets": {"out": {"type": "kafka", "topic": "jobs.out"}}, **overrides}


def test_backend_defaults_to_kafka_and_takes_sqs() -> None:
    assert parse_namespace(_doc()).backend == "kafka"
    sqs = parse_namespace(_doc(backend="sqs"))
    assert sqs.backend == "sqs"
    assert sqs.topics() == ("wal.jobs.cdc",)  # only the change topic lives in Kafka


def test_a_bad_backend_names_the_field_and_the_choices() -> None:
    with pytest.raises(NamespaceError) as bad:
        parse_namespace(_doc(backend="rabbitmq"))
    assert "backend: 'rabbitmq' is not one of kafka, sqs" in str(bad.value)


def test_an_sqs_namespace_name_must_fit_a_queue_name() -> None:
    with pytest.raises(NamespaceError) as bad:
        parse_namespace(_doc(name="n" * 73, backend="sqs"))
    assert "name" in str(bad.value) and "72" in str(bad.value)
    assert parse_namespace(_doc(name="n" * 73)).backend == "kafka"


def test_queue_names() -> None:
    assert topics.sqs_queue("orders") == "wal-orders"
    assert topics.sqs_dlq_queue("orders") == "wal-orders-dlq"


@pytest.mark.parametrize(
    ("due", "now", "cap", "expected"),
    [(0, 1_000, 900, 0), (1_000, 1_000, 900, 0), (2_999, 1_000, 900, 1), (61_000, 1_000, 900, 60), (10**9, 0, 900, 900),
     (10**9, 0, 4, 4)],
)  # fmt: skip
def test_a_queue_delay_is_whole_seconds_rounded_down_and_capped(due: int, now: int, cap: int, expected: int) -> None:
    assert queue_delay_s(due, now, cap) == expected


def test_sqs_settings_are_read_and_checked() -> None:
    env = {"WALSTREAM_SQS_ENDPOINT": "http://127.0.0.1:1234", "WALSTREAM_SQS_MAX_DELAY_S": "5", "HOME": "/tmp"}
    settings = load_settings(env, uid=1000)
    assert settings.sqs.endpoint == "http://127.0.0.1:1234" and settings.sqs.max_delay_s == 5
    with pytest.raises(ConfigError) as bad:
        load_settings({"WALSTREAM_SQS_MAX_DELAY_S": "901", "HOME": "/tmp"}, uid=1000)
    assert "WALSTREAM_SQS_MAX_DELAY_S" in str(bad.value)
    with pytest.raises(ConfigError) as bad:
        load_settings({"WALSTREAM_SQS_PORT": "19092", "HOME": "/tmp"}, uid=1000)
    assert "sqs_port" in str(bad.value) and "kafka_port" in str(bad.value)


def test_the_queue_table_keeps_the_newest_keys_and_persists_at_once() -> None:
    table = QueueTable(limit=2)
    table.set(b"a", {"v": 1})
    table.set(b"b", {"v": 2})
    assert table.get(b"a") == {"v": 1}  # a is now the most recently used
    table.set(b"c", {"v": 3})
    assert table.get(b"b") is None and table.get(b"a") == {"v": 1}

    async def persisted() -> list[Durable]:
        return [d.durable for d in await table.persist([(b"a", 0, {"v": 1})])]

    assert asyncio.run(persisted()) == [Durable.TRUE]
