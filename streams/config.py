"""The only module that reads the environment: typed, frozen, validated-once settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.regions import RegionSettings
from streams.security_settings import CassandraSecurity as CassandraSecurity
from streams.security_settings import ClientSecurity as ClientSecurity
from streams.security_settings import ElasticsearchSecurity as ElasticsearchSecurity
from streams.security_settings import KafkaProtocol as KafkaProtocol
from streams.security_settings import KafkaSecurity as KafkaSecurity
from streams.security_settings import SaslMechanism as SaslMechanism
from streams.sqs_settings import SqsSettings

Port = Annotated[int, Field(ge=1, le=65535)]

ENV_PREFIX = "WALSTREAM_"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


class StackMode(StrEnum):
    """Where the Kafka, Cassandra and Elasticsearch that walstream uses come from."""

    LOCAL = "local"  # JVM processes started by walstream itself (the default)
    TESTCONTAINERS = "testcontainers"  # containers, where a Docker engine answers
    EXTERNAL = "external"  # clusters somebody else runs


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalStackSettings(_Frozen):
    """Ports, folders and heaps of the embedded stack."""

    cache_dir: Path
    stack_dir: Path
    java_home: Path | None = None
    kafka_port: Port = 19092
    kafka_controller_port: Port = 19093
    cassandra_port: Port = 19042
    cassandra_storage_port: Port = 17000
    elasticsearch_port: Port = 19200
    elasticsearch_transport_port: Port = 19300
    #: 2 adds a second region beside the first: its own Kafka (the ports below) and one MirrorMaker 2 process
    #: replicating the namespaces' logs both ways. Its stores are a keyspace and an index of their own on the
    #: same Cassandra and Elasticsearch (the region's ``store_suffix``).
    regions: int = Field(default=1, ge=1, le=2)
    kafka_west_port: Port = 19094
    kafka_west_controller_port: Port = 19095
    mirror_heap: str = "256m"
    #: ElasticMQ, the SQS-compatible server of the stack (queues of namespaces with ``backend: sqs``).
    sqs_port: Port = 19324
    kafka_heap: str = "512m"
    cassandra_heap: str = "1g"
    elasticsearch_heap: str = "512m"
    sqs_heap: str = "160m"
    #: The system user Elasticsearch runs as when the stack is started by root (it refuses root).
    elasticsearch_user: str = "walstream"
    start_timeout_s: float = Field(default=240.0, gt=0)
    #: Run the stack secured: Kafka on SASL_SSL (SCRAM), Cassandra with passwords and TLS, Elasticsearch with its
    #: security module and TLS. Certificates and passwords are generated into ``<stack_dir>/secrets``.
    secure: bool = False

    @field_validator("kafka_heap", "cassandra_heap", "elasticsearch_heap", "mirror_heap", "sqs_heap")
    @classmethod
    def _heap_size(cls, value: str) -> str:
        digits, unit = value[:-1], value[-1:].lower()
        if not digits.isdigit() or unit not in {"m", "g"}:
            raise ValueError(f"heap size {value!r} must look like 512m or 1g")
        return digits + unit

    @model_validator(mode="after")
    def _distinct_ports(self) -> LocalStackSettings:
        ports = self.ports()
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(f"{name} and {seen[port]} both use port {port}")
            seen[port] = name
        return self

    def ports(self) -> dict[str, int]:
        return {
            "kafka_port": self.kafka_port,
            "kafka_controller_port": self.kafka_controller_port,
            "cassandra_port": self.cassandra_port,
            "cassandra_storage_port": self.cassandra_storage_port,
            "elasticsearch_port": self.elasticsearch_port,
            "elasticsearch_transport_port": self.elasticsearch_transport_port,
            "kafka_west_port": self.kafka_west_port,
            "kafka_west_controller_port": self.kafka_west_controller_port,
            "sqs_port": self.sqs_port,
        }


class ExternalEndpointSettings(_Frozen):
    """Endpoints of clusters walstream does not run; used in the external mode."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    cassandra_contact: str = "127.0.0.1:9042"
    elasticsearch_url: str = "http://127.0.0.1:9200"

    @field_validator("cassandra_contact")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} must look like host:port")
        return value


class RuntimeSettings(_Frozen):
    """What the workers and tools need besides endpoints."""

    namespace_dir: Path = Path("examples/namespaces")
    data_dir: Path
    replication_factor: int = Field(default=1, ge=1, le=5)
    #: Where /metrics, /healthz and /readyz listen (worker and API): loopback unless told; the chart sets 0.0.0.0.
    metrics_host: str = "127.0.0.1"
    #: Where helm/install-tools.sh puts the chart tools (read by that script and tests/helm; default <repo>/.tools).
    tools_dir: Path | None = None
    #: Workers' /readyz addresses (host:port or http(s)://host:port, comma-separated) that `walstream status`
    #: asks whether the flood guard holds a namespace.
    status_workers: tuple[str, ...] = ()

    @field_validator("status_workers", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> object:
        return parse_addresses(value) if isinstance(value, str) else value


def parse_addresses(text: str) -> tuple[str, ...]:
    """Comma-separated HTTP addresses (host:port, or http(s)://host:port); ValueError names a malformed one."""
    found = tuple(part.strip() for part in text.split(",") if part.strip())
    for address in found:
        host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{address!r} must look like host:port or http://host:port")
    return found


class ApiSettings(_Frozen):
    """The WriteToLog gRPC server (`walstream api`)."""

    #: Loopback by default; a pod (the chart) sets 0.0.0.0.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 50051
    max_in_flight: int = Field(default=256, ge=1)
    tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    grace_s: float = Field(default=10.0, ge=0)
    ack_timeout_s: float = Field(default=35.0, gt=0)
    idempotency_ttl_s: float = Field(default=600.0, gt=0)
    idempotency_max_keys: int = Field(default=100_000, ge=1)
    txn_producers: int = Field(default=2, ge=1, le=64)
    txn_id_prefix: str | None = None
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    #: Server processes sharing the port (SO_REUSEPORT) under one supervising parent; 1 serves in-process.
    processes: int = Field(default=1, ge=1, le=64)
    #: /healthz answers 503 once the producer has not reached Kafka for this long (a restart may help then).
    kafka_unreachable_s: float = Field(default=60.0, gt=0)
    #: WriteStream: entries of one stream read ahead of the answers its client has taken.
    stream_window: int = Field(default=128, ge=1, le=100_000)
    #: How long the API's producer waits to fill a batch: short, because every call waits for its answer.
    linger_ms: float = Field(default=1.0, ge=0, le=1000)

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("WALSTREAM_API_TLS_CERT and WALSTREAM_API_TLS_KEY go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("WALSTREAM_API_TLS_CLIENT_CA (mTLS) needs WALSTREAM_API_TLS_CERT and _KEY")
        return self


class Settings(_Frozen):
    mode: StackMode = StackMode.LOCAL
    local: LocalStackSettings
    external: ExternalEndpointSettings = ExternalEndpointSettings()
    runtime: RuntimeSettings
    api: ApiSettings = ApiSettings()
    region: RegionSettings = RegionSettings()
    sqs: SqsSettings = SqsSettings()
    kafka: KafkaSecurity = KafkaSecurity()
    cassandra: CassandraSecurity = CassandraSecurity()
    elasticsearch: ElasticsearchSecurity = ElasticsearchSecurity()

    def client_security(self) -> ClientSecurity:
        return ClientSecurity(kafka=self.kafka, cassandra=self.cassandra, elasticsearch=self.elasticsearch)


# Environment variable (without the prefix) -> (section, field).
_ENV_FIELDS: dict[str, tuple[str | None, str]] = {
    "STACK_MODE": (None, "mode"),
    "CACHE_DIR": ("local", "cache_dir"),
    "STACK_DIR": ("local", "stack_dir"),
    "JAVA_HOME": ("local", "java_home"),
    "KAFKA_PORT": ("local", "kafka_port"),
    "KAFKA_CONTROLLER_PORT": ("local", "kafka_controller_port"),
    "CASSANDRA_PORT": ("local", "cassandra_port"),
    "CASSANDRA_STORAGE_PORT": ("local", "cassandra_storage_port"),
    "ELASTICSEARCH_PORT": ("local", "elasticsearch_port"),
    "ELASTICSEARCH_TRANSPORT_PORT": ("local", "elasticsearch_transport_port"),
    "SQS_PORT": ("local", "sqs_port"),
    "SQS_HEAP": ("local", "sqs_heap"),
    "SQS_ENDPOINT": ("sqs", "endpoint"),
    "SQS_REGION": ("sqs", "region"),
    "SQS_MAX_DELAY_S": ("sqs", "max_delay_s"),
    "SQS_RECEIVES": ("sqs", "receives"),
    "SQS_VISIBILITY_S": ("sqs", "visibility_s"),
    "SQS_WAIT_S": ("sqs", "wait_s"),
    "KAFKA_HEAP": ("local", "kafka_heap"),
    "STACK_REGIONS": ("local", "regions"),
    "KAFKA_WEST_PORT": ("local", "kafka_west_port"),
    "KAFKA_WEST_CONTROLLER_PORT": ("local", "kafka_west_controller_port"),
    "MIRROR_HEAP": ("local", "mirror_heap"),
    "REGION": ("region", "name"),
    "REGION_ENDPOINTS": ("region", "endpoints"),
    "CASSANDRA_HEAP": ("local", "cassandra_heap"),
    "ELASTICSEARCH_HEAP": ("local", "elasticsearch_heap"),
    "ELASTICSEARCH_USER": ("local", "elasticsearch_user"),
    "START_TIMEOUT": ("local", "start_timeout_s"),
    "STACK_SECURE": ("local", "secure"),
    "KAFKA_BOOTSTRAP": ("external", "kafka_bootstrap"),
    "CASSANDRA_CONTACT": ("external", "cassandra_contact"),
    "ELASTICSEARCH_URL": ("external", "elasticsearch_url"),
    "NAMESPACE_DIR": ("runtime", "namespace_dir"),
    "DATA_DIR": ("runtime", "data_dir"),
    "REPLICATION_FACTOR": ("runtime", "replication_factor"),
    "TOOLS_DIR": ("runtime", "tools_dir"),
    "METRICS_HOST": ("runtime", "metrics_host"),
    "STATUS_WORKERS": ("runtime", "status_workers"),
    "API_HOST": ("api", "host"),
    "API_PORT": ("api", "port"),
    "API_MAX_IN_FLIGHT": ("api", "max_in_flight"),
    "API_TOKENS_FILE": ("api", "tokens_file"),
    "API_TLS_CERT": ("api", "tls_cert"),
    "API_TLS_KEY": ("api", "tls_key"),
    "API_TLS_CLIENT_CA": ("api", "tls_client_ca"),
    "API_GRACE_S": ("api", "grace_s"),
    "API_ACK_TIMEOUT_S": ("api", "ack_timeout_s"),
    "API_IDEMPOTENCY_TTL_S": ("api", "idempotency_ttl_s"),
    "API_IDEMPOTENCY_MAX_KEYS": ("api", "idempotency_max_keys"),
    "API_TXN_PRODUCERS": ("api", "txn_producers"),
    "API_TXN_ID_PREFIX": ("api", "txn_id_prefix"),
    "API_MAX_MESSAGE_BYTES": ("api", "max_message_bytes"),
    "API_METRICS_PORT": ("api", "metrics_port"),
    "API_PROCESSES": ("api", "processes"),
    "API_KAFKA_UNREACHABLE_S": ("api", "kafka_unreachable_s"),
    "API_STREAM_WINDOW": ("api", "stream_window"),
    "API_LINGER_MS": ("api", "linger_ms"),
    "KAFKA_SECURITY_PROTOCOL": ("kafka", "protocol"),
    "KAFKA_SASL_MECHANISM": ("kafka", "sasl_mechanism"),
    "KAFKA_USERNAME": ("kafka", "username"),
    "KAFKA_PASSWORD": ("kafka", "password"),
    "KAFKA_CA_FILE": ("kafka", "ca_file"),
    "KAFKA_CERT_FILE": ("kafka", "cert_file"),
    "KAFKA_KEY_FILE": ("kafka", "key_file"),
    "CASSANDRA_USERNAME": ("cassandra", "username"),
    "CASSANDRA_PASSWORD": ("cassandra", "password"),
    "CASSANDRA_TLS": ("cassandra", "tls"),
    "CASSANDRA_CA_FILE": ("cassandra", "ca_file"),
    "CASSANDRA_VERIFY_HOSTNAME": ("cassandra", "verify_hostname"),
    "CASSANDRA_CERT_FILE": ("cassandra", "cert_file"),
    "CASSANDRA_KEY_FILE": ("cassandra", "key_file"),
    "ELASTICSEARCH_USERNAME": ("elasticsearch", "username"),
    "ELASTICSEARCH_PASSWORD": ("elasticsearch", "password"),
    "ELASTICSEARCH_API_KEY": ("elasticsearch", "api_key"),
    "ELASTICSEARCH_CA_FILE": ("elasticsearch", "ca_file"),
    "ELASTICSEARCH_FINGERPRINT": ("elasticsearch", "fingerprint"),
}

#: Secrets may be given as a file instead (``WALSTREAM_KAFKA_PASSWORD_FILE``): the file's content, without the
#: trailing newline, is the secret. Never put a secret on a command line.
_SECRET_FILE_SUFFIX = "_FILE"
_SECRETS = {"KAFKA_PASSWORD", "CASSANDRA_PASSWORD", "ELASTICSEARCH_PASSWORD", "ELASTICSEARCH_API_KEY"}


def default_dirs(env: Mapping[str, str], uid: int) -> tuple[Path, Path, Path]:
    """Cache, stack and worker-data folders. As root they live under /var so the unprivileged search user can
    reach them."""
    if uid == 0:
        return Path("/var/cache/walstream"), Path("/var/lib/walstream/stack"), Path("/var/lib/walstream/data")
    home = Path(env.get("HOME", "~")).expanduser()
    cache = Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "walstream"
    state = Path(env.get("XDG_STATE_HOME") or home / ".local" / "state") / "walstream"
    return cache, state / "stack", state / "data"


def load_settings(env: Mapping[str, str] | None = None, uid: int | None = None) -> Settings:
    """Build the settings from ``WALSTREAM_*`` variables; unknown ones are an error, as are bad values."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    cache_dir, stack_dir, data_dir = default_dirs(env, uid)
    sections: dict[str, dict[str, Any]] = {
        "local": {"cache_dir": cache_dir, "stack_dir": stack_dir},
        "external": {},
        "runtime": {"data_dir": data_dir},
        "api": {},
        "region": {},
        "sqs": {},
        "kafka": {},
        "cassandra": {},
        "elasticsearch": {},
    }
    top: dict[str, Any] = {}
    unknown = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :]
        if key.endswith(_SECRET_FILE_SUFFIX) and key[: -len(_SECRET_FILE_SUFFIX)] in _SECRETS:
            secret = key[: -len(_SECRET_FILE_SUFFIX)]
            if ENV_PREFIX + secret in env:
                raise ConfigError(f"{ENV_PREFIX}{secret} and {name} are alternatives: set one")
            key, value = secret, _read_secret(name, value)
        if key not in _ENV_FIELDS:
            unknown.append(name)
            continue
        section, field = _ENV_FIELDS[key]
        (top if section is None else sections[section])[field] = value
    if unknown:
        known = ", ".join(ENV_PREFIX + k for k in sorted([*_ENV_FIELDS, *(k + _SECRET_FILE_SUFFIX for k in _SECRETS)]))
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}; known settings are: {known}")
    try:
        return Settings.model_validate({**top, **sections})
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _read_secret(name: str, path: str) -> str:
    try:
        secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(f"{name}: {path} is empty")
    return secret


def _explain(exc: ValidationError) -> str:
    by_field = {(section, field): ENV_PREFIX + key for key, (section, field) in _ENV_FIELDS.items()}
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        if len(loc) >= 2:
            var = by_field.get((loc[0], loc[1]), ".".join(loc))
        elif loc and (None, loc[0]) in by_field:
            var = by_field[(None, loc[0])]
        else:
            var = "settings"  # a rule across several settings: its message names them
        lines.append(f"{var}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid settings: " + "; ".join(lines)
