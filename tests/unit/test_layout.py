"""The import rules of ARCHITECTURE.md, read from the code's own imports: dependencies point one way."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = (
    "confluent_kafka",
    "faust",
    "mode",
    "aiokafka",
    "cassandra",
    "elasticsearch",
    "elastic_transport",
    "grpc",
    "botocore",
    "aiobotocore",
    "boto3",
)
#: What connectors/ may use of streams: plain values and contracts, never behaviour.
CONNECTOR_MAY_USE = ("streams.model", "streams.ports", "streams.config", "streams.namespaces.spec")
#: The only places that wire connectors in.
CONNECTOR_USERS = ("streams.worker", "streams.api.server", "streams.client", "streams.tools")
#: Modules that stay one cohesive thing although they pass the size guideline.
LONG_BUT_COHESIVE = {"connectors.local.services", "streams.model"}


def modules() -> dict[str, Path]:
    found = {}
    for package in ("streams", "connectors"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_generated" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path, name: str) -> Iterator[str]:
    """Every module ``path`` imports, absolute, at any depth of the file (lazy imports in functions count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_core_imports_no_driver_and_no_connector() -> None:
    broken = []
    for name, path in modules().items():
        if within(name, "streams.model", "streams.ports", "streams.core", "streams.pipeline"):
            broken += [f"{name} imports {m}" for m in imports_of(path, name) if within(m, *DRIVERS, "connectors")]
    assert broken == []


def test_connectors_use_only_values_and_contracts_of_streams() -> None:
    broken = []
    for name, path in modules().items():
        if within(name, "connectors"):
            used = {m for m in imports_of(path, name) if within(m, "streams")}
            broken += [f"{name} imports {m}" for m in sorted(used) if not within(m, *CONNECTOR_MAY_USE)]
    assert broken == []


def test_only_the_composition_places_import_connectors() -> None:
    broken = []
    for name, path in modules().items():
        if within(name, "streams") and not within(name, *CONNECTOR_USERS):
            broken += [f"{name} imports {m}" for m in imports_of(path, name) if within(m, "connectors")]
    assert broken == []


def test_no_import_cycles_between_files() -> None:
    found = modules()
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        targets = set()
        for module in imports_of(path, name):
            # `from pkg import name` names a module when pkg.name is one; else the import is of pkg itself.
            target = module if module in found else module.rpartition(".")[0]
            if target in found and target != name:
                targets.add(target)
        graph[name] = targets
    # A package's face (its __init__) re-exports its modules; an edge into a face is an edge into the package.
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and not nxt.startswith(node + ".") and not node.startswith(nxt + "."):
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]) if nxt in trail else f"{node}->{nxt}")
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_modules_stay_small() -> None:
    long = [
        f"{name}: {len(path.read_text().splitlines())} lines"
        for name, path in modules().items()
        if len(path.read_text().splitlines()) > 450 and name not in LONG_BUT_COHESIVE
    ]
    assert long == []
