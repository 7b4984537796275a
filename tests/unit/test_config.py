"""Settings come only from WALSTREAM_* variables, are validated once, and errors name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.config import ConfigError, StackMode, load_settings


def test_defaults_for_a_normal_user() -> None:
    settings = load_settings({"HOME": "/home/ann"}, uid=1000)
    assert settings.mode is StackMode.LOCAL
    assert settings.local.cache_dir == Path("/home/ann/.cache/walstream")
    assert settings.local.stack_dir == Path("/home/ann/.local/state/walstream/stack")
    assert settings.local.kafka_port == 19092


def test_root_keeps_its_folders_where_an_unprivileged_user_can_reach_them() -> None:
    settings = load_settings({"HOME": "/root"}, uid=0)
    assert not str(settings.local.cache_dir).startswith("/root")
    assert not str(settings.local.stack_dir).startswith("/root")


def test_values_are_read_and_typed() -> None:
    env = {
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_PORT": "29092",
        "WALSTREAM_CASSANDRA_CONTACT": "db:9042",
    }
    settings = load_settings(env, uid=1000)
    assert settings.mode is StackMode.EXTERNAL
    assert settings.local.kafka_port == 29092
    assert settings.external.cassandra_contact == "db:9042"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WALSTREAM_KAFKA_PORT": "ninety"}, "WALSTREAM_KAFKA_PORT"),
        ({"WALSTREAM_KAFKA_PORT": "70000"}, "WALSTREAM_KAFKA_PORT"),
        ({"WALSTREAM_STACK_MODE": "docker"}, "WALSTREAM_STACK_MODE"),
        ({"WALSTREAM_CASSANDRA_HEAP": "lots"}, "WALSTREAM_CASSANDRA_HEAP"),
        ({"WALSTREAM_CASSANDRA_CONTACT": "nohostport"}, "WALSTREAM_CASSANDRA_CONTACT"),
        ({"WALSTREAM_KAFKA_PROT": "1"}, "WALSTREAM_KAFKA_PROT"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env, uid=1000)
    assert named in str(err.value)


def test_two_services_on_one_port_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"WALSTREAM_CASSANDRA_PORT": "19092"}, uid=1000)
    assert "19092" in str(err.value)
