"""What changes when the embedded stack runs secured: the servers' security settings and the clients' side.

Pure functions of the settings and the secrets' paths (passwords are passed in where a config file needs
one), so the config text can be checked without starting anything.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from connectors.local.credentials import CLIENT_USER, ELASTICSEARCH_USER, StackSecrets
from streams.config import (
    CassandraSecurity,
    ClientSecurity,
    ElasticsearchSecurity,
    KafkaProtocol,
    KafkaSecurity,
    LocalStackSettings,
    SaslMechanism,
)

HOST = "127.0.0.1"
#: The Kafka listener clients and the broker itself use when secured; its name is also its protocol.
KAFKA_SECURE_LISTENER = "SASL_SSL"
#: Where the Elasticsearch node finds its PEM files: it may only read files inside its config folder.
ES_CERTS_DIR = "certs"


def kafka_properties(settings: LocalStackSettings, secrets: StackSecrets, password: str) -> dict[str, str]:
    """The broker properties that replace the PLAINTEXT client listener with SASL_SSL (SCRAM-SHA-512).

    The broker talks to itself (transaction markers, its own clients) over the same listener as user
    ``walstream``, whose SCRAM credentials are written into the metadata log when the storage is formatted.
    The controller listener stays PLAINTEXT on 127.0.0.1: only the node itself connects to it.
    No authorizer: authentication and TLS are the goal, so every authenticated user may do everything.
    """
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{CLIENT_USER}" password="{password}";'
    )
    prefix = f"listener.name.{KAFKA_SECURE_LISTENER.lower()}."
    return {
        "listeners": (
            f"{KAFKA_SECURE_LISTENER}://{HOST}:{settings.kafka_port},CONTROLLER://{HOST}:{settings.kafka_controller_port}"
        ),
        "advertised.listeners": f"{KAFKA_SECURE_LISTENER}://{HOST}:{settings.kafka_port}",
        "inter.broker.listener.name": KAFKA_SECURE_LISTENER,
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{KAFKA_SECURE_LISTENER}:SASL_SSL",
        "sasl.enabled.mechanisms": SaslMechanism.SCRAM_SHA_512.value,
        "sasl.mechanism.inter.broker.protocol": SaslMechanism.SCRAM_SHA_512.value,
        prefix + "scram-sha-512.sasl.jaas.config": jaas,
        "super.users": f"User:{CLIENT_USER}",
        # PEM files straight from the secrets folder; the key is not encrypted, so no key password is set.
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(secrets.keystore_file),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(secrets.ca_file),
        "ssl.client.auth": "none",
    }


def kafka_scram_argument(password: str) -> str:
    """``kafka-storage format --add-scram``'s value: the client user's (and the broker's) credentials."""
    return f"{SaslMechanism.SCRAM_SHA_512.value}=[name={CLIENT_USER},password={password}]"


def cassandra_config(secrets: StackSecrets) -> dict[str, Any]:
    """cassandra.yaml entries: passwords required, and TLS required on the native (client) port."""
    return {
        "authenticator": "PasswordAuthenticator",
        # Roles and their permissions are not the point of the local stack: walstream is a superuser anyway.
        "authorizer": "AllowAllAuthorizer",
        "client_encryption_options": {
            "enabled": True,
            "optional": False,
            "ssl_context_factory": {"class_name": "org.apache.cassandra.security.PEMBasedSslContextFactory"},
            # The key (not encrypted, hence no keystore_password) followed by its certificate chain.
            "keystore": str(secrets.keystore_file),
            "truststore": str(secrets.ca_file),
            "require_client_auth": False,
        },
    }


def elasticsearch_yml() -> str:
    """elasticsearch.yml lines: the security module on, TLS on HTTP and on the (loopback) transport port."""
    lines = ["xpack.security.enabled: true"]
    for layer in ("http", "transport"):
        lines += [
            f"xpack.security.{layer}.ssl.enabled: true",
            f"xpack.security.{layer}.ssl.key: {ES_CERTS_DIR}/server-key.pem",
            f"xpack.security.{layer}.ssl.certificate: {ES_CERTS_DIR}/server.pem",
            f"xpack.security.{layer}.ssl.certificate_authorities: [{ES_CERTS_DIR}/ca.pem]",
        ]
    # One node talks to itself: checking the chain is enough, the transport layer never dials a host name.
    lines.append("xpack.security.transport.ssl.verification_mode: certificate")
    return "".join(line + "\n" for line in lines)


def client_security(secrets: StackSecrets) -> ClientSecurity:
    """What a client of the secured stack needs, as the settings models every client reads."""
    return ClientSecurity(
        kafka=KafkaSecurity(
            protocol=KafkaProtocol.SASL_SSL,
            sasl_mechanism=SaslMechanism.SCRAM_SHA_512,
            username=CLIENT_USER,
            password=SecretStr(secrets.password(secrets.kafka_password_file)),
            ca_file=secrets.ca_file,
        ),
        cassandra=CassandraSecurity(
            username=CLIENT_USER,
            password=SecretStr(secrets.password(secrets.cassandra_password_file)),
            tls=True,
            ca_file=secrets.ca_file,
            verify_hostname=True,
        ),
        elasticsearch=ElasticsearchSecurity(
            username=ELASTICSEARCH_USER,
            password=SecretStr(secrets.password(secrets.elasticsearch_password_file)),
            ca_file=secrets.ca_file,
        ),
    )


def client_security_env(secrets: StackSecrets) -> dict[str, str]:
    """The same as :func:`client_security`, as ``WALSTREAM_*`` variables; passwords as files, never values."""
    return {
        "WALSTREAM_KAFKA_SECURITY_PROTOCOL": KafkaProtocol.SASL_SSL.value,
        "WALSTREAM_KAFKA_SASL_MECHANISM": SaslMechanism.SCRAM_SHA_512.value,
        "WALSTREAM_KAFKA_USERNAME": CLIENT_USER,
        "WALSTREAM_KAFKA_PASSWORD_FILE": str(secrets.kafka_password_file),
        "WALSTREAM_KAFKA_CA_FILE": str(secrets.ca_file),
        "WALSTREAM_CASSANDRA_USERNAME": CLIENT_USER,
        "WALSTREAM_CASSANDRA_PASSWORD_FILE": str(secrets.cassandra_password_file),
        "WALSTREAM_CASSANDRA_TLS": "true",
        "WALSTREAM_CASSANDRA_CA_FILE": str(secrets.ca_file),
        "WALSTREAM_CASSANDRA_VERIFY_HOSTNAME": "true",
        "WALSTREAM_ELASTICSEARCH_USERNAME": ELASTICSEARCH_USER,
        "WALSTREAM_ELASTICSEARCH_PASSWORD_FILE": str(secrets.elasticsearch_password_file),
        "WALSTREAM_ELASTICSEARCH_CA_FILE": str(secrets.ca_file),
    }


def kafka_client_config(security: KafkaSecurity) -> dict[str, str]:
    """librdkafka settings for the stack's own readiness check (the app's clients build theirs elsewhere)."""
    if security.protocol is KafkaProtocol.PLAINTEXT:
        return {}
    config = {"security.protocol": security.protocol.value}
    if security.ca_file is not None:
        config["ssl.ca.location"] = str(security.ca_file)
    if security.username is not None and security.password is not None:
        config["sasl.mechanisms"] = security.sasl_mechanism.value
        config["sasl.username"] = security.username
        config["sasl.password"] = security.password.get_secret_value()
    return config
