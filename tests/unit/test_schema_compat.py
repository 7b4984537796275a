"""Every current schema reads data written with each version in schemas/history (the evolution rules, enforced)."""

from __future__ import annotations

import copy
import io
import json
from importlib import resources
from typing import Any

import fastavro
import pytest
from fastavro.read import SchemaResolutionError

from schemas.loader import SCHEMA_NAMES, history_versions, load_history, load_schema

_PRIMITIVE_SAMPLES: dict[str, list[Any]] = {
    "null": [None],
    "boolean": [True, False],
    "int": [7, -(2**31)],
    "long": [1_700_000_000_000_000, 2**63 - 1],
    "float": [1.5, 0.0],
    "double": [2.25, -1.0],
    "bytes": [b"\x00payload", b""],
    "string": ["text", ""],
}


def _sample(schema: Any, variant: int, named: dict[str, Any], namespace: str = "") -> Any:
    """A valid datum for an Avro schema (JSON form); ``variant`` picks enum symbols and union branches in turn."""
    if isinstance(schema, list):
        return _sample(schema[variant % len(schema)], variant, named, namespace)
    if isinstance(schema, str):
        if schema in _PRIMITIVE_SAMPLES:
            samples = _PRIMITIVE_SAMPLES[schema]
            return samples[variant % len(samples)]
        full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
        return _sample(named[full], variant, named, namespace)
    kind = schema["type"]
    if kind in ("record", "enum", "fixed"):
        namespace = schema.get("namespace", namespace)
        name = schema["name"]
        named[name if "." in name else f"{namespace}.{name}" if namespace else name] = schema
    if kind == "record":
        return {field["name"]: _sample(field["type"], variant, named, namespace) for field in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][variant % len(schema["symbols"])]
    if kind == "array":
        return [_sample(schema["items"], variant, named, namespace)]
    if kind == "map":
        return {"k": _sample(schema["values"], variant, named, namespace)}
    if kind == "fixed":
        return bytes(schema["size"])
    return _sample(kind, variant, named, namespace)


def _widest_choice(schema: Any) -> int:
    """How many variants it takes to use every enum symbol and union branch at least once."""
    if isinstance(schema, list):
        return max([len(schema), *(_widest_choice(branch) for branch in schema)])
    if isinstance(schema, dict):
        widths = [len(schema.get("symbols", ()))]
        widths += [_widest_choice(field["type"]) for field in schema.get("fields", ())]
        widths += [_widest_choice(schema[key]) for key in ("items", "values") if key in schema]
        if isinstance(schema.get("type"), dict | list):
            widths.append(_widest_choice(schema["type"]))
        return max(widths)
    return 2  # primitives have two samples


def read_problems(writer_json: dict[str, Any], reader_json: dict[str, Any]) -> list[str]:
    """Why data written with ``writer_json`` cannot be read with ``reader_json`` (empty list: it can)."""
    writer = fastavro.parse_schema(writer_json, named_schemas={})
    reader = fastavro.parse_schema(reader_json, named_schemas={})
    problems = []
    for variant in range(_widest_choice(writer_json)):
        datum = _sample(writer_json, variant, {})
        out = io.BytesIO()
        fastavro.schemaless_writer(out, writer, datum)
        out.seek(0)
        try:
            fastavro.schemaless_reader(out, writer, reader)
        except SchemaResolutionError as exc:
            problems.append(f"variant {variant}: {exc}")
    return problems


@pytest.mark.parametrize(
    ("name", "version"), [(name, version) for name in SCHEMA_NAMES for version in history_versions(name)]
)
def test_current_schema_reads_every_historical_version(name: str, version: int) -> None:
    assert read_problems(load_history(name)[version], load_schema(name)) == []


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_has_contiguous_history_from_v1(name: str) -> None:
    versions = history_versions(name)
    assert versions[:1] == (1,), f"schemas/history/{name}.v1.avsc is missing"
    assert versions == tuple(range(1, len(versions) + 1))


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_each_file_parses_on_its_own_in_the_v1_namespace(name: str) -> None:
    schema = load_schema(name)
    assert schema["namespace"] == "walstream.v1"
    assert schema["type"] == "record"
    fastavro.parse_schema(schema, named_schemas={})


def test_inlined_records_are_identical_to_their_own_definitions() -> None:
    wal_entry = {key: value for key, value in load_schema("wal_entry").items() if key != "namespace"}
    envelope = {f["name"]: f["type"] for f in load_schema("retry_envelope")["fields"]}
    letter = {f["name"]: f["type"] for f in load_schema("dead_letter")["fields"]}
    assert envelope["entry"] == wal_entry
    assert letter["entry"] == ["null", wal_entry]
    assert envelope["origin"] == letter["origin"]


def test_history_files_are_shipped_next_to_the_schemas() -> None:
    history = resources.files("schemas") / "history"
    names = {item.name for item in history.iterdir()}
    for name in SCHEMA_NAMES:
        assert f"{name}.v1.avsc" in names
        assert json.loads((history / f"{name}.v1.avsc").read_text())["name"] == load_schema(name)["name"]


# -- the check must be able to fail ----------------------------------------------------------------------------------


def _wal_entry_with(change: str) -> dict[str, Any]:
    schema = copy.deepcopy(load_schema("wal_entry"))
    fields = schema["fields"]
    if change == "new field without default":
        fields.append({"name": "region", "type": "string"})
    elif change == "new field with default":
        fields.append({"name": "region", "type": ["null", "string"], "default": None})
    elif change == "removed enum symbol":
        next(f for f in fields if f["name"] == "op")["type"]["symbols"] = ["UPSERT"]
    elif change == "changed type":
        next(f for f in fields if f["name"] == "sequence")["type"] = "string"
    elif change == "renamed field":
        next(f for f in fields if f["name"] == "key")["name"] = "entity_key"
    elif change == "renamed field with alias":
        renamed = next(f for f in fields if f["name"] == "key")
        renamed["name"], renamed["aliases"] = "entity_key", ["key"]
    return schema


@pytest.mark.parametrize(
    "change", ["new field without default", "removed enum symbol", "changed type", "renamed field"]
)
def test_an_incompatible_change_is_detected(change: str) -> None:
    assert read_problems(load_history("wal_entry")[1], _wal_entry_with(change)) != []


@pytest.mark.parametrize("change", ["new field with default", "renamed field with alias"])
def test_a_compatible_change_passes(change: str) -> None:
    assert read_problems(load_history("wal_entry")[1], _wal_entry_with(change)) == []
