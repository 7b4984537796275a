"""The secured stack's pure parts: its secrets (made once, private, reused) and the config it writes."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from connectors.local.credentials import StackSecrets, ensure_secrets
from connectors.local.errors import StackError
from connectors.local.secured import cassandra_config, elasticsearch_yml, kafka_properties, kafka_scram_argument
from connectors.local.stack import LocalStack
from streams.config import KafkaProtocol, LocalStackSettings, StackMode, load_settings
from streams.tools.cli import main


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _settings(stack_dir: Path, secure: bool) -> LocalStackSettings:
    return LocalStackSettings(cache_dir=stack_dir.parent / "cache", stack_dir=stack_dir, secure=secure)


def _contents(secrets: StackSecrets) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in secrets.dir.iterdir()}


def test_secrets_are_made_private(tmp_path: Path) -> None:
    secrets = ensure_secrets(tmp_path)
    assert _mode(secrets.dir) == 0o700
    files = list(secrets.dir.iterdir())
    assert {p.name for p in files} >= {"ca.pem", "server.pem", "server-key.pem", "kafka.password"}
    assert all(_mode(p) == 0o600 for p in files), {p.name: oct(_mode(p)) for p in files}
    passwords = [secrets.password(p) for p in secrets.dir.glob("*.password")]
    assert len(passwords) == 3 and len(set(passwords)) == 3
    assert all(len(p) == 32 and p.isalnum() for p in passwords)


def test_the_server_certificate_is_signed_by_the_ca_for_the_loopback_names(tmp_path: Path) -> None:
    secrets = ensure_secrets(tmp_path)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(secrets.ca_file), str(secrets.cert_file)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    san = subprocess.run(
        ["openssl", "x509", "-in", str(secrets.cert_file), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in san and "DNS:localhost" in san
    keystore = secrets.keystore_file.read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----") and keystore.count("BEGIN CERTIFICATE") == 2


def test_secrets_are_reused_and_only_what_is_missing_is_made(tmp_path: Path) -> None:
    secrets = ensure_secrets(tmp_path)
    first = _contents(secrets)
    assert _contents(ensure_secrets(tmp_path)) == first

    secrets.kafka_password_file.unlink()
    secrets.cert_file.unlink()
    again = _contents(ensure_secrets(tmp_path))
    # The passwords the servers' data remembers are kept; the certificates are made again as one set.
    assert again["cassandra.password"] == first["cassandra.password"]
    assert again["elasticsearch.password"] == first["elasticsearch.password"]
    assert again["kafka.password"] != first["kafka.password"]
    assert again["ca.pem"] != first["ca.pem"]


def test_kafka_listens_only_on_sasl_ssl_and_the_broker_logs_in_as_walstream(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "stack", secure=True)
    secrets = StackSecrets(tmp_path / "secrets")
    props = kafka_properties(settings, secrets, "pw123")
    assert props["listeners"] == f"SASL_SSL://127.0.0.1:{settings.kafka_port},CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == f"SASL_SSL://127.0.0.1:{settings.kafka_port}"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert 'username="walstream" password="pw123";' in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert props["ssl.keystore.location"] == str(secrets.keystore_file)
    assert props["super.users"] == "User:walstream"
    assert [k for k, v in props.items() if "pw123" in v] == ["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert kafka_scram_argument("pw123") == "SCRAM-SHA-512=[name=walstream,password=pw123]"


def test_cassandra_requires_passwords_and_tls(tmp_path: Path) -> None:
    config = cassandra_config(StackSecrets(tmp_path))
    assert config["authenticator"] == "PasswordAuthenticator"
    tls = config["client_encryption_options"]
    assert tls["enabled"] is True and tls["optional"] is False
    assert tls["ssl_context_factory"]["class_name"].endswith("PEMBasedSslContextFactory")
    assert tls["keystore"] == str(tmp_path / "server-keystore.pem")


def test_elasticsearch_turns_security_and_tls_on_with_files_in_its_config_folder() -> None:
    yml = elasticsearch_yml()
    assert "xpack.security.enabled: true\n" in yml
    assert "xpack.security.http.ssl.enabled: true\n" in yml
    assert "xpack.security.http.ssl.key: certs/server-key.pem\n" in yml
    assert "xpack.security.http.ssl.certificate_authorities: [certs/ca.pem]\n" in yml
    assert "password" not in yml


def test_client_env_is_what_an_external_client_reads_back(tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack"
    stack_dir.mkdir()
    ensure_secrets(stack_dir)
    (stack_dir / "security").write_text("secured\n")
    stack = LocalStack(_settings(stack_dir, secure=True))
    env = stack.client_env()
    secrets = stack.secrets
    assert env["WALSTREAM_KAFKA_PASSWORD_FILE"] == str(secrets.kafka_password_file)
    for password_file in secrets.dir.glob("*.password"):
        assert secrets.password(password_file) not in "".join(env.values())

    settings = load_settings(env, uid=1000)
    endpoints = stack.endpoints()
    assert settings.mode is StackMode.EXTERNAL
    assert settings.external.kafka_bootstrap == endpoints.kafka_bootstrap
    assert settings.external.cassandra_contact == f"{endpoints.cassandra_host}:{endpoints.cassandra_port}"
    assert settings.external.elasticsearch_url == endpoints.elasticsearch_url
    assert endpoints.elasticsearch_url.startswith("https://")
    assert settings.client_security() == endpoints.security
    assert endpoints.security.kafka.protocol is KafkaProtocol.SASL_SSL


def test_client_env_of_an_open_stack_has_no_security(tmp_path: Path) -> None:
    env = LocalStack(_settings(tmp_path / "stack", secure=False)).client_env()
    assert env == {
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
        "WALSTREAM_CASSANDRA_CONTACT": "127.0.0.1:19042",
        "WALSTREAM_ELASTICSEARCH_URL": "http://127.0.0.1:19200",
        "WALSTREAM_SQS_ENDPOINT": "http://127.0.0.1:19324",
    }


@pytest.mark.parametrize(("made", "asked"), [("secured", False), ("open", True)])
def test_up_refuses_a_stack_dir_made_for_the_other_kind(tmp_path: Path, made: str, asked: bool) -> None:
    (tmp_path / "security").write_text(made + "\n")
    with pytest.raises(StackError, match="nothing was started") as err:
        LocalStack(_settings(tmp_path, secure=asked)).up()
    assert str(tmp_path) in str(err.value) and "--secure" in str(err.value)


def test_a_stack_dir_with_data_from_before_the_secured_stack_is_an_open_one(tmp_path: Path) -> None:
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    with pytest.raises(StackError, match="holds an open stack's data"):
        LocalStack(_settings(tmp_path, secure=True)).up()


def test_other_actions_follow_what_the_stack_dir_was_made_for(tmp_path: Path) -> None:
    ensure_secrets(tmp_path)
    (tmp_path / "security").write_text("secured\n")
    stack = LocalStack(_settings(tmp_path, secure=False))
    assert stack.secure
    assert stack.endpoints().elasticsearch_url.startswith("https://")


def test_cli_stack_env_prints_exports_a_shell_can_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack_dir = tmp_path / "my stack"
    stack_dir.mkdir()
    ensure_secrets(stack_dir)
    (stack_dir / "security").write_text("secured\n")
    for name in [n for n in os.environ if n.startswith("WALSTREAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WALSTREAM_STACK_DIR", str(stack_dir))
    monkeypatch.setenv("WALSTREAM_KAFKA_PORT", "29092")
    assert main(["stack", "env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "export WALSTREAM_STACK_MODE=external"
    assert all(line.startswith("export WALSTREAM_") for line in lines)
    exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines)
    assert exported["WALSTREAM_KAFKA_BOOTSTRAP"] == "127.0.0.1:29092"
    assert exported["WALSTREAM_KAFKA_PASSWORD_FILE"] == str(stack_dir / "secrets" / "kafka.password")
