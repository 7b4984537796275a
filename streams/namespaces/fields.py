"""The value types of a namespace document's fields: names of targets, CQL identifiers, index and field names, Kafka
topics, the closed choices; each refuses a bad value with a message saying what a good one looks like."""

from __future__ import annotations

import re
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from streams.topics import parse_retention

_TARGET_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
CQL_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_ES_INDEX_FORBIDDEN = set(' \\/*?"<>|,#:')


def one_of(kind: Any) -> BeforeValidator:
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


def es_index(value: str) -> str:
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


def valid_retention(value: str) -> str:
    parse_retention(value)
    return value


def _kafka_topic(value: str) -> str:
    if _KAFKA_TOPIC.fullmatch(value) is None or value in {".", ".."}:
        raise ValueError(f"{value!r} is not a valid Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)")
    return value


TargetName = Annotated[str, _matching(_TARGET_NAME, "target name ([a-z][a-z0-9_-]*, at most 64 characters)")]
CqlName = Annotated[str, _matching(CQL_NAME, "CQL identifier ([a-z][a-z0-9_]*, at most 48 characters)")]
EsIndexName = Annotated[str, AfterValidator(es_index)]
EsFieldName = Annotated[str, AfterValidator(_es_field)]
PayloadField = Annotated[str, AfterValidator(_non_empty)]
KafkaTopic = Annotated[str, AfterValidator(_kafka_topic)]
# YAML gives lists; a tuple keeps the settings immutable.
NameList = Annotated[tuple[str, ...], Field(strict=False)]


class Model(BaseModel):
    # strict: "3" is not an int and 1 is not a string; every key must be known.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
