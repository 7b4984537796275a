"""The namespace document as frozen, strictly validated types: the one definition of a namespace and its targets."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias, get_args, overload

from fastavro import parse_schema
from fastavro.schema import SchemaParseException
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic import field_validator as _field_validator

from streams.topics import (
    DEFAULT_RETENTION,
    all_topics,
    cdc_topic,
    parse_duration,
    parse_retention,
    tier_label,
    validate_namespace_name,
)

CassandraType = Literal["text", "int", "bigint", "double", "boolean", "timestamp", "blob", "uuid"]
ElasticsearchType = Literal["keyword", "text", "long", "integer", "double", "boolean", "date"]
Persona = Literal["fanout", "delay-queue", "replication"]
#: Where a namespace's log lives: Kafka topics (the default) or an SQS-compatible queue.
Backend = Literal["kafka", "sqs"]
PayloadFormat = Literal["json", "avro"]
TargetType = Literal["cassandra", "elasticsearch", "kafka"]

DEFAULT_TIERS: tuple[str, ...] = ("1s", "10s", "1m", "10m")
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: SQS queue names have at most 80 characters, and the dead-letter queue is wal-<ns>-dlq.
_SQS_NAME_MAX = 72

_TARGET_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_CQL_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_ES_INDEX_FORBIDDEN = set(' \\/*?"<>|,#:')


# -- errors ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a namespace document: the dotted field path ('' for the whole file) and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class UnknownTargetError(ValueError):
    """A request names a target its namespace does not declare."""

    def __init__(self, namespace: str, unknown: Sequence[str], declared: Iterable[str]) -> None:
        self.namespace = namespace
        self.unknown = tuple(unknown)
        names = ", ".join(repr(name) for name in self.unknown)
        noun = "target" if len(self.unknown) == 1 else "targets"
        super().__init__(
            f"namespace {namespace!r} has no {noun} {names}; it declares: {', '.join(declared) or '(none)'}"
        )


class Problems(ValueError):
    """Raised inside validators to report several problems at paths relative to the model being validated."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = list(problems)


# -- field types -------------------------------------------------------------------------------------------------------


def _one_of(kind: Any) -> BeforeValidator:
    """Refuse a value outside the Literal ``kind`` with a message listing the choices."""
    choices: tuple[str, ...] = get_args(kind)

    def check(value: object) -> object:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return BeforeValidator(check)


def _matching(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if pattern.fullmatch(value) is None:
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return AfterValidator(check)


def _es_index(value: str) -> str:
    if (
        not value
        or value != value.lower()
        or value[0] in "_-+"
        or value in {".", ".."}
        or _ES_INDEX_FORBIDDEN.intersection(value)
        or len(value.encode()) > 255
    ):
        raise ValueError(
            f'{value!r} is not a valid Elasticsearch index name (lowercase, no spaces or any of \\/*?"<>|,#:, '
            "not starting with _ - +, at most 255 bytes)"
        )
    return value


def _es_field(value: str) -> str:
    if not value or value.startswith("_") or value != value.strip():
        raise ValueError(f"{value!r} is not a valid Elasticsearch field name (non-empty, not starting with _)")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _retention(value: str) -> str:
    parse_retention(value)
    return value


def _kafka_topic(value: str) -> str:
    if _KAFKA_TOPIC.fullmatch(value) is None or value in {".", ".."}:
        raise ValueError(f"{value!r} is not a valid Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)")
    return value


TargetName = Annotated[str, _matching(_TARGET_NAME, "target name ([a-z][a-z0-9_-]*, at most 64 characters)")]
CqlName = Annotated[str, _matching(_CQL_NAME, "CQL identifier ([a-z][a-z0-9_]*, at most 48 characters)")]
EsIndexName = Annotated[str, AfterValidator(_es_index)]
EsFieldName = Annotated[str, AfterValidator(_es_field)]
PayloadField = Annotated[str, AfterValidator(_non_empty)]
KafkaTopic = Annotated[str, AfterValidator(_kafka_topic)]
# YAML gives lists; a tuple keeps the settings immutable.
NameList = Annotated[tuple[str, ...], Field(strict=False)]


class _Model(BaseModel):
    # strict: "3" is not an int and 1 is not a string; every key must be known.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# -- the document ------------------------------------------------------------------------------------------------------


class Column(_Model):
    """A Cassandra column: its CQL type and the payload field it holds (by default, the field of the same name)."""

    type: Annotated[CassandraType, _one_of(CassandraType)]
    field: PayloadField | None = None


class CassandraTarget(_Model):
    """A Cassandra table; the entry key goes to ``key_column`` (a text primary key)."""

    type: Literal["cassandra"]
    keyspace: CqlName
    table: CqlName
    key_column: CqlName
    columns: dict[CqlName, Column]
    replication_factor: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _key_column_is_not_mapped(self) -> CassandraTarget:
        if self.key_column in self.columns:
            raise Problems(
                [Problem(f"columns.{self.key_column}", "the key column holds the entry key; do not map it again")]
            )
        return self

    @property
    def qualified(self) -> str:
        """keyspace.table"""
        return f"{self.keyspace}.{self.table}"

    def column_fields(self) -> dict[str, str]:
        """Column -> payload field it is filled from."""
        return {name: column.field or name for name, column in self.columns.items()}


class ElasticsearchTarget(_Model):
    """An Elasticsearch index; documents are keyed by the entry key and mapped with ``fields``."""

    type: Literal["elasticsearch"]
    index: EsIndexName
    fields: dict[EsFieldName, Annotated[ElasticsearchType, _one_of(ElasticsearchType)]]
    shards: int = Field(default=1, ge=1)
    replicas: int = Field(default=0, ge=0)


class KafkaTarget(_Model):
    """A Kafka topic the entry is forwarded to (the delay-queue persona's outbox)."""

    type: Literal["kafka"]
    topic: KafkaTopic


Target: TypeAlias = Annotated[CassandraTarget | ElasticsearchTarget | KafkaTarget, Field(discriminator="type")]


class PayloadSpec(_Model):
    """How entry payloads are encoded; an Avro payload carries its record schema inline."""

    format: Annotated[PayloadFormat, _one_of(PayloadFormat)] = "json"
    avro_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    max_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, ge=1)

    @model_validator(mode="after")
    def _schema_matches_format(self) -> PayloadSpec:
        if self.format == "json" and self.avro_schema is not None:
            raise Problems([Problem("schema", "a json payload takes no schema; remove it or use format: avro")])
        if self.format == "avro":
            if self.avro_schema is None:
                raise Problems([Problem("schema", "an avro payload needs its Avro record schema")])
            _check_avro_record(self.avro_schema)
        return self

    def field_names(self) -> frozenset[str] | None:
        """The payload's top-level field names when the format declares them (avro), else None."""
        if self.avro_schema is None:
            return None
        return frozenset(str(field["name"]) for field in self.avro_schema["fields"])


def _check_avro_record(schema: dict[str, Any]) -> None:
    if schema.get("type") != "record":
        raise Problems([Problem("schema.type", f"{schema.get('type')!r} is not 'record'; the payload is a record")])
    try:
        parse_schema(schema, named_schemas={})
    except (SchemaParseException, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Problems([Problem("schema", f"not a valid Avro schema: {exc}")]) from exc


class RetryPolicy(_Model):
    """Retry tiers (strictly increasing, canonical labels such as 10s), backoff and the attempt budget."""

    tiers: NameList = DEFAULT_TIERS
    backoff_multiplier: float = Field(default=2.0, ge=1.0)
    max_attempts: int = Field(default=8, ge=1)
    #: The flood guard: above this many dead letters in a minute the namespace pauses instead of draining its
    #: log into the DLQ (a bad deploy or a broken mapping fails every entry).
    dlq_max_per_minute: int = Field(default=600, ge=1)

    @_field_validator("tiers")
    @classmethod
    def _canonical_increasing(cls, tiers: tuple[str, ...]) -> tuple[str, ...]:
        if not tiers:
            raise ValueError("at least one retry tier is required")
        problems: list[Problem] = []
        labels: list[str] = []
        previous = 0
        for index, tier in enumerate(tiers):
            try:
                ms = parse_duration(tier)
            except ValueError as exc:
                problems.append(Problem(f"[{index}]", str(exc)))
                continue
            if ms <= previous:
                what = "positive" if previous == 0 else f"longer than the tier before it ({tier_label(previous)})"
                problems.append(Problem(f"[{index}]", f"{tier!r} must be {what}; tiers strictly increase"))
            previous = max(previous, ms)
            labels.append(tier_label(ms))
        if problems:
            raise Problems(problems)
        return tuple(labels)


class Throttle(_Model):
    """Rate limits applied by the workers."""

    max_deletes_per_second: float | None = Field(default=None, gt=0)


#: In an authorization list: any caller, anonymous ones included.
ANYONE = "*"


class Authorization(_Model):
    """Which producer identities may write through the API. Closed unless it says otherwise: an empty list
    admits nobody, ``"*"`` admits anyone. Deletes need their own grant (``deleters``), so a service that may
    write is not thereby allowed to erase."""

    producers: NameList = ()
    deleters: NameList = ()

    @_field_validator("producers", "deleters")
    @classmethod
    def _distinct(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        problems = [Problem(f"[{i}]", "must not be empty") for i, name in enumerate(names) if not name.strip()]
        problems += [
            Problem(f"[{i}]", f"{name!r} is listed twice") for i, name in enumerate(names) if name in names[:i]
        ]
        if ANYONE in names and len(names) > 1:
            problems.append(Problem("", f"{ANYONE!r} admits anyone; list it alone or list identities"))
        if problems:
            raise Problems(problems)
        return names


class Namespace(_Model):
    """One namespace: its log, its targets and the policies its workers apply."""

    name: Annotated[str, AfterValidator(validate_namespace_name)]
    partitions: int = Field(default=3, ge=1, le=1000)
    persona: Annotated[Persona, _one_of(Persona)] = "fanout"
    #: The log the namespace's entries go through: Kafka topics, or an SQS queue (``wal-<ns>``, its DLQ queue).
    backend: Annotated[Backend, _one_of(Backend)] = "kafka"
    payload: PayloadSpec = PayloadSpec()
    targets: dict[TargetName, Target]
    retry: RetryPolicy = RetryPolicy()
    throttle: Throttle = Throttle()
    authorization: Authorization = Authorization()
    #: How long the log keeps entries (the topic's retention.ms): how far back `walstream replay` can go.
    retention: Annotated[str, AfterValidator(_retention)] = DEFAULT_RETENTION

    @model_validator(mode="after")
    def _queue_names_fit(self) -> Namespace:
        if self.backend == "sqs" and len(self.name) > _SQS_NAME_MAX:
            raise Problems(
                [Problem("name", f"an sqs namespace's name has at most {_SQS_NAME_MAX} characters (queue names)")]
            )
        return self

    @_field_validator("targets")
    @classmethod
    def _at_least_one(cls, targets: dict[str, Any]) -> dict[str, Any]:
        if not targets:
            raise ValueError("at least one target is required")
        return targets

    @model_validator(mode="after")
    def _mapped_fields_exist(self) -> Namespace:
        known = self.payload.field_names()
        if known is None:
            return self
        problems: list[Problem] = []
        for target_name, target in self.targets.items():
            if isinstance(target, CassandraTarget):
                for column, source in target.column_fields().items():
                    if source not in known:
                        where = "field" if target.columns[column].field else "type"
                        problems.append(
                            Problem(
                                f"targets.{target_name}.columns.{column}.{where}",
                                f"payload field {source!r} is not in the payload schema",
                            )
                        )
            elif isinstance(target, ElasticsearchTarget):
                problems.extend(
                    Problem(f"targets.{target_name}.fields.{field}", f"{field!r} is not in the payload schema")
                    for field in target.fields
                    if field not in known
                )
        if problems:
            raise Problems(problems)
        return self

    # -- helpers ---------------------------------------------------------------------------------------------------

    def target(self, name: str) -> CassandraTarget | ElasticsearchTarget | KafkaTarget:
        """The target called ``name``; UnknownTargetError if the namespace does not declare it."""
        try:
            return self.targets[name]
        except KeyError:
            raise UnknownTargetError(self.name, [name], self.targets) from None

    @overload
    def targets_of_type(self, kind: Literal["cassandra"]) -> dict[str, CassandraTarget]: ...
    @overload
    def targets_of_type(self, kind: Literal["elasticsearch"]) -> dict[str, ElasticsearchTarget]: ...
    @overload
    def targets_of_type(self, kind: Literal["kafka"]) -> dict[str, KafkaTarget]: ...

    def targets_of_type(self, kind: TargetType) -> dict[str, Any]:
        """The targets of one type, by name, in declaration order."""
        if kind not in get_args(TargetType):
            raise ValueError(f"{kind!r} is not one of {', '.join(get_args(TargetType))}")
        return {name: target for name, target in self.targets.items() if target.type == kind}

    def resolve_targets(self, requested: Sequence[str]) -> tuple[str, ...]:
        """The targets a request applies to, in declaration order: all of them when ``requested`` is empty.

        Raises UnknownTargetError naming every requested target the namespace does not declare.
        """
        if isinstance(requested, str):
            raise TypeError("requested targets must be a sequence of names, not a single string")
        if not requested:
            return tuple(self.targets)
        unknown = [name for name in dict.fromkeys(requested) if name not in self.targets]
        if unknown:
            raise UnknownTargetError(self.name, unknown, self.targets)
        wanted = set(requested)
        return tuple(name for name in self.targets if name in wanted)

    def retention_ms(self) -> int:
        """The log topic's retention.ms (-1: kept forever)."""
        return parse_retention(self.retention)

    def tier_delays_ms(self) -> tuple[int, ...]:
        """The retry tiers' delays in milliseconds, ascending."""
        return tuple(parse_duration(tier) for tier in self.retry.tiers)

    def topics(self) -> tuple[str, ...]:
        """Every topic this namespace needs: log, retry tiers, DLQ and CDC; only the CDC topic for an SQS log."""
        if self.backend == "sqs":
            return (cdc_topic(self.name),)
        return all_topics(self.name, self.retry.tiers)
