"""Reads namespace YAML files into validated Namespace values; every error names the file and the field."""

from __future__ import annotations

import difflib
import os
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from streams.namespaces.spec import (
    Authorization,
    CassandraTarget,
    Column,
    ElasticsearchTarget,
    KafkaTarget,
    Namespace,
    PayloadSpec,
    Problem,
    Problems,
    RetryPolicy,
    TargetType,
    Throttle,
)


class NamespaceError(ValueError):
    """A namespace document cannot be used; ``path`` is the file and ``problems`` lists each field that is wrong."""

    def __init__(self, path: Path | None, problems: Sequence[Problem]) -> None:
        self.path = path
        self.problems: list[Problem] = list(problems)
        prefix = f"{path}: " if path is not None else ""
        super().__init__("\n".join(prefix + str(problem) for problem in self.problems))


_MODELS: tuple[type[BaseModel], ...] = (
    Namespace,
    PayloadSpec,
    CassandraTarget,
    Column,
    ElasticsearchTarget,
    KafkaTarget,
    RetryPolicy,
    Throttle,
    Authorization,
)


def _known_keys() -> list[str]:
    return sorted({info.alias or name for model in _MODELS for name, info in model.model_fields.items()})


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key repeated in one mapping (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _path_of(loc: Sequence[int | str]) -> list[str | int]:
    parts: list[str | int] = [part for part in loc if part != "[key]"]
    # A discriminated union adds the tag to the location (targets.primary.cassandra.columns); users never wrote it.
    if len(parts) >= 3 and parts[0] == "targets" and parts[2] in get_args(TargetType):
        del parts[2]
    return parts


def _join(parts: Sequence[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int) or (isinstance(part, str) and part.startswith("[")):
            text += part if isinstance(part, str) else f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _problems_of(error: ErrorDetails) -> list[Problem]:
    parts = _path_of(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, Problems):
        return [Problem(_join([*parts, p.field] if p.field else parts), p.message) for p in cause.problems]
    field = _join(parts)
    if kind in {"value_error", "assertion_error"}:
        return [Problem(field, str(cause) if cause is not None else error["msg"])]
    if kind == "missing":
        return [Problem(field, "is required")]
    if kind == "extra_forbidden":
        key = str(parts[-1]) if parts else ""
        close = difflib.get_close_matches(key, _known_keys(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return [Problem(field, f"unknown key{hint}")]
    if kind == "union_tag_invalid":
        choices = ", ".join(get_args(TargetType))
        return [Problem(_join([*parts, "type"]), f"{ctx.get('tag')!r} is not one of {choices}")]
    if kind == "union_tag_not_found":
        return [Problem(_join([*parts, "type"]), f"is required: one of {', '.join(get_args(TargetType))}")]
    message = error["msg"]
    return [Problem(field, f"{message[:1].lower()}{message[1:]}, got {_short(error['input'])}")]


def parse_namespace(document: object, path: Path | None = None) -> Namespace:
    """Validate an already-parsed YAML document; NamespaceError lists every problem with its field path."""
    if document is None:
        raise NamespaceError(path, [Problem("", "the document is empty; expected a mapping with name and targets")])
    if not isinstance(document, dict):
        raise NamespaceError(path, [Problem("", f"the top level must be a mapping, got {type(document).__name__}")])
    try:
        return Namespace.model_validate(document)
    except ValidationError as exc:
        problems = [problem for error in exc.errors() for problem in _problems_of(error)]
        raise NamespaceError(path, problems) from None


def load_namespace(path: str | os.PathLike[str]) -> Namespace:
    """Read and validate one namespace YAML file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NamespaceError(file, [Problem("", "file not found")]) from None
    except IsADirectoryError:
        raise NamespaceError(file, [Problem("", "is a directory, not a namespace file")]) from None
    except UnicodeDecodeError as exc:
        raise NamespaceError(file, [Problem("", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except OSError as exc:
        raise NamespaceError(file, [Problem("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        detail = exc.problem or exc.context or "invalid YAML"
        raise NamespaceError(file, [Problem("", f"invalid YAML at {where}{detail}")]) from None
    except yaml.YAMLError as exc:
        raise NamespaceError(file, [Problem("", f"invalid YAML: {exc}")]) from None
    return parse_namespace(document, file)


def _namespace_files(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    paths = [Path(source)] if isinstance(source, str | os.PathLike) else [Path(item) for item in source]
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file()))
        else:
            files.append(path)  # load_namespace reports a missing file
    return files


def load_namespaces(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> dict[str, Namespace]:
    """Load every ``*.yaml``/``*.yml`` of a directory (or the given files and directories), keyed by name.

    Raises NamespaceError for the first file that is invalid, or that repeats a name another file defined.
    """
    loaded: dict[str, Namespace] = {}
    origin: dict[str, Path] = {}
    for file in _namespace_files(source):
        namespace = load_namespace(file)
        if namespace.name in loaded:
            raise NamespaceError(
                file, [Problem("name", f"namespace {namespace.name!r} is already defined in {origin[namespace.name]}")]
            )
        loaded[namespace.name] = namespace
        origin[namespace.name] = file
    return loaded
