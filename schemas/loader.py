"""Reads the Avro schema files shipped in the schemas package, current and historical versions."""

from __future__ import annotations

import json
import re
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

#: The record schemas, by file stem, in a stable order.
SCHEMA_NAMES: tuple[str, ...] = ("wal_entry", "change_event", "retry_envelope", "dead_letter")

_HISTORY_FILE = re.compile(r"(?P<name>[a-z_]+)\.v(?P<version>[1-9][0-9]*)\.avsc")


def _package_root() -> Traversable:
    return resources.files(__package__ or "schemas")


def _read_json(resource: Traversable) -> dict[str, Any]:
    document = json.loads(resource.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"{resource.name}: an Avro record schema must be a JSON object")
    return document


def _check_name(name: str) -> None:
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")


def load_schema(name: str) -> dict[str, Any]:
    """The current schema ``schemas/<name>.avsc`` as a JSON object (not yet parsed by fastavro)."""
    _check_name(name)
    return _read_json(_package_root() / f"{name}.avsc")


def history_versions(name: str) -> tuple[int, ...]:
    """The versions of ``name`` kept in ``schemas/history/``, ascending."""
    _check_name(name)
    history = _package_root() / "history"
    if not history.is_dir():
        return ()
    versions = []
    for resource in history.iterdir():
        match = _HISTORY_FILE.fullmatch(resource.name)
        if match and match["name"] == name:
            versions.append(int(match["version"]))
    return tuple(sorted(versions))


def load_history(name: str) -> dict[int, dict[str, Any]]:
    """Every historical version of ``name``: version number -> schema JSON object."""
    history = _package_root() / "history"
    return {version: _read_json(history / f"{name}.v{version}.avsc") for version in history_versions(name)}
