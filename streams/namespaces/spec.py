"""The namespace document as frozen, strictly validated types: the one definition of a namespace and its targets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeAlias, get_args, overload

from fastavro import parse_schema
from fastavro.schema import SchemaParseException
from pydantic import AfterValidator, Field, PrivateAttr, model_validator
from pydantic import field_validator as _field_validator

from streams.namespaces.fields import (
    CQL_NAME,
    CqlName,
    EsFieldName,
    EsIndexName,
    KafkaTopic,
    NameList,
    PayloadField,
    TargetName,
    es_index,
    valid_retention,
)
from streams.namespaces.fields import Model as _Model
from streams.namespaces.fields import one_of as _one_of
from streams.namespaces.problems import Problem as Problem
from streams.namespaces.problems import Problems as Problems
from streams.namespaces.problems import UnknownTargetError as UnknownTargetError
from streams.topics import (
    DEFAULT_RETENTION,
    all_topics,
    cdc_topic,
    origin_region,
    parse_duration,
    parse_retention,
    region_logs,
    tier_label,
    validate_namespace_name,
    wal_topic,
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


_REGION = re.compile(r"[a-z][a-z0-9]{0,15}")
#: At most this many regions (a replicated entry's store version is ``sequence * 16 + region rank``).
MAX_REGIONS = 16


class Replication(_Model):
    """The regions a namespace lives in (each its own Kafka, workers and stores; MirrorMaker 2 between the
    logs), and whether a writer may use another region's log when its own does not answer."""

    regions: NameList
    failover: bool = False

    @_field_validator("regions")
    @classmethod
    def _regions(cls, regions: tuple[str, ...]) -> tuple[str, ...]:
        problems = [
            Problem(f"[{i}]", f"{name!r} is not a region name (1 to 16 lowercase letters or digits, a letter first)")
            if _REGION.fullmatch(name) is None
            else Problem(f"[{i}]", f"{name!r} is listed twice")
            for i, name in enumerate(regions)
            if _REGION.fullmatch(name) is None or name in regions[:i]
        ]
        if not 2 <= len(regions) <= MAX_REGIONS:
            problems.append(Problem("", f"a replicated namespace lives in 2 to {MAX_REGIONS} regions"))
        if problems:
            raise Problems(problems)
        return regions


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


def _suffixed(target: Target, suffix: str) -> Target:
    if suffix and isinstance(target, CassandraTarget):
        keyspace = target.keyspace + suffix
        if CQL_NAME.fullmatch(keyspace) is None:
            raise ValueError(f"keyspace {keyspace!r} (with the region's suffix) is not a valid CQL name")
        return target.model_copy(update={"keyspace": keyspace})
    if suffix and isinstance(target, ElasticsearchTarget):
        return target.model_copy(update={"index": es_index(target.index + suffix.replace("_", "-"))})
    return target


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
    retention: Annotated[str, AfterValidator(valid_retention)] = DEFAULT_RETENTION
    replication: Replication | None = None
    #: The region this copy of the namespace is used in (``in_region``); never part of the document.
    _region: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _fits_its_backend(self) -> Namespace:
        if self.backend == "sqs" and len(self.name) > _SQS_NAME_MAX:
            raise Problems(
                [Problem("name", f"an sqs namespace's name has at most {_SQS_NAME_MAX} characters (queue names)")]
            )
        if self.backend == "sqs" and self.replication is not None:
            # MirrorMaker 2 replicates Kafka topics; an SQS queue has no replica in another region.
            raise Problems([Problem("replication", "cross-region replication needs backend: kafka (it is sqs)")])
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

    def in_region(self, region: str | None, store_suffix: str = "") -> Namespace:
        """This namespace as ``region``'s processes use it: Cassandra keyspaces and Elasticsearch indices carry the
        region's ``store_suffix``; a replicated one consumes the other regions' logs too. ValueError when a
        replicated namespace does not live in ``region`` or a suffixed name is not valid."""
        if self.replication is not None and region is not None and region not in self.replication.regions:
            raise ValueError(f"namespace {self.name!r} lives in {', '.join(self.replication.regions)}, not {region!r}")
        targets = {name: _suffixed(target, store_suffix) for name, target in self.targets.items()}
        copy = self.model_copy(update={"targets": targets})
        copy._region = region
        return copy

    @property
    def replicated(self) -> bool:  # replicated, and this copy runs in one of its regions
        return self.replication is not None and self._region is not None

    def logs(self) -> tuple[str, ...]:
        """The logs its workers consume: ``wal.<ns>``, and in a region of a replicated namespace each other
        region's log as MirrorMaker 2 names it (``east.wal.<ns>``)."""
        if self.replication is None or self._region is None:
            return (wal_topic(self.name),)
        return region_logs(self.name, self.replication.regions, self._region)

    def origin_rank(self, topic: str) -> int:
        """The position in ``replication.regions`` of the region whose log ``topic`` is."""
        return self.replication.regions.index(self.origin_region(topic)) if self.replication else 0

    def origin_region(self, topic: str) -> str:
        """The region whose log ``topic`` is (this copy's region for ``wal.<ns>``)."""
        return origin_region(self.name, topic, self._region or "")

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
