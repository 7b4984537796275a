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


def test_secured_clusters_are_configured_from_variables_and_files(tmp_path: Path) -> None:
    secret = tmp_path / "kafka.password"
    secret.write_text("s3cret-kafka\n", encoding="utf-8")
    settings = load_settings(
        {
            "WALSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "WALSTREAM_KAFKA_USERNAME": "walstream",
            "WALSTREAM_KAFKA_PASSWORD_FILE": str(secret),
            "WALSTREAM_KAFKA_CA_FILE": "/etc/ca.pem",
            "WALSTREAM_CASSANDRA_USERNAME": "walstream",
            "WALSTREAM_CASSANDRA_PASSWORD": "s3cret-cassandra",
            "WALSTREAM_CASSANDRA_TLS": "true",
            "WALSTREAM_ELASTICSEARCH_API_KEY": "s3cret-key",
        },
        uid=1000,
    )
    security = settings.client_security()
    assert security.kafka.password is not None and security.kafka.password.get_secret_value() == "s3cret-kafka"
    assert security.cassandra.tls and security.cassandra.verify_hostname, "host names are checked unless said"
    assert security.elasticsearch.api_key is not None
    for text in (repr(settings), str(settings)):
        assert "s3cret" not in text, "a secret must never show in a repr"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WALSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "WALSTREAM_KAFKA_USERNAME"),
        ({"WALSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "WALSTREAM_KAFKA_SECURITY_PROTOCOL"),
        ({"WALSTREAM_KAFKA_PASSWORD": "x", "WALSTREAM_KAFKA_PASSWORD_FILE": "/x"}, "WALSTREAM_KAFKA_PASSWORD_FILE"),
        ({"WALSTREAM_CASSANDRA_PASSWORD_FILE": "/no/such/file"}, "WALSTREAM_CASSANDRA_PASSWORD_FILE"),
        ({"WALSTREAM_CASSANDRA_USERNAME": "u"}, "WALSTREAM_CASSANDRA_PASSWORD"),
        ({"WALSTREAM_CASSANDRA_CA_FILE": "/ca.pem"}, "WALSTREAM_CASSANDRA_TLS"),
        (
            {
                "WALSTREAM_ELASTICSEARCH_API_KEY": "k",
                "WALSTREAM_ELASTICSEARCH_USERNAME": "u",
                "WALSTREAM_ELASTICSEARCH_PASSWORD": "p",
            },
            "WALSTREAM_ELASTICSEARCH_API_KEY",
        ),
    ],
)
def test_incomplete_security_names_what_to_fix(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(env, uid=1000)


def test_secrets_stay_out_of_error_messages() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"WALSTREAM_KAFKA_PASSWORD": "hunter2-secret"}, uid=1000)
    assert "hunter2-secret" not in str(refused.value)
