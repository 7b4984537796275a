"""Namespace files load strictly; every broken file gives an error naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from pydantic import BaseModel

from streams.namespaces import (
    CassandraTarget,
    ElasticsearchTarget,
    KafkaTarget,
    Namespace,
    NamespaceError,
    Problem,
    UnknownTargetError,
    load_namespace,
    load_namespaces,
    parse_namespace,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "namespaces"
ORDERS = EXAMPLES / "orders.yaml"


def orders_document() -> dict[str, Any]:
    document = yaml.safe_load(ORDERS.read_text())
    assert isinstance(document, dict)
    return document


def write(tmp_path: Path, document: object, name: str = "ns.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(NamespaceError) as caught:
        load_namespace(path)
    assert caught.value.path == path
    for line in str(caught.value).splitlines():
        assert line.startswith(f"{path}: "), "every line names the file"
    return caught.value.problems


def fields_of(path: Path) -> dict[str, str]:
    return {problem.field: problem.message for problem in problems_of(path)}


# -- the example ----------------------------------------------------------------------------------------------------


def test_the_example_loads_with_its_defaults() -> None:
    ns = load_namespace(ORDERS)
    assert ns.name == "orders" and ns.partitions == 3 and ns.persona == "fanout"
    assert ns.payload.format == "json" and ns.payload.max_bytes == 1024 * 1024 and ns.payload.avro_schema is None
    primary = ns.targets["primary"]
    assert isinstance(primary, CassandraTarget)
    assert (primary.keyspace, primary.table, primary.key_column) == ("walstream_demo", "orders", "id")
    assert {name: column.type for name, column in primary.columns.items()} == {
        "customer": "text",
        "status": "text",
        "amount": "double",
    }
    assert primary.column_fields() == {"customer": "customer", "status": "status", "amount": "amount"}
    search = ns.targets["search"]
    assert isinstance(search, ElasticsearchTarget)
    assert search.index == "walstream-orders"
    assert search.fields == {"customer": "keyword", "status": "keyword", "amount": "double"}
    assert ns.retry.tiers == ("1s", "10s", "1m", "10m")
    assert ns.tier_delays_ms() == (1_000, 10_000, 60_000, 600_000)
    assert ns.retry.max_attempts == 8 and ns.retry.backoff_multiplier == 2.0
    assert ns.throttle.max_deletes_per_second is None
    assert ns.authorization.producers == ("checkout", "order-admin") and ns.authorization.deleters == ("order-admin",)
    assert ns.topics()[0] == "wal.orders" and ns.topics()[-1] == "wal.orders.cdc"


def test_the_example_directory_loads() -> None:
    assert set(load_namespaces(EXAMPLES)) == {"orders"}


def test_a_namespace_is_frozen() -> None:
    ns = load_namespace(ORDERS)
    with pytest.raises(pydantic.ValidationError):
        ns.partitions = 9


def test_minimal_document_gets_every_default(tmp_path: Path) -> None:
    ns = load_namespace(write(tmp_path, {"name": "jobs", "targets": {"out": {"type": "kafka", "topic": "jobs.due"}}}))
    assert ns.partitions == 3 and ns.persona == "fanout" and ns.payload.format == "json"
    assert ns.retry.tiers == ("1s", "10s", "1m", "10m")
    assert isinstance(ns.targets["out"], KafkaTarget)


# -- field errors ---------------------------------------------------------------------------------------------------


def test_the_message_names_file_field_and_choices(tmp_path: Path) -> None:
    document = orders_document()
    document["targets"]["primary"]["columns"]["amount"]["type"] = "dubble"
    path = write(tmp_path, document, "orders.yaml")
    with pytest.raises(NamespaceError) as caught:
        load_namespace(path)
    assert str(caught.value) == (
        f"{path}: targets.primary.columns.amount.type: "
        "'dubble' is not one of text, int, bigint, double, boolean, timestamp, blob, uuid"
    )


@pytest.mark.parametrize(
    ("path_in_document", "value", "field", "fragment"),
    [
        (("name",), "Orders", "name", "namespace name 'Orders'"),
        (("partitions",), 0, "partitions", "greater than or equal to 1"),
        (("partitions",), 1001, "partitions", "less than or equal to 1000"),
        (("partitions",), "3", "partitions", "valid integer"),
        (("persona",), "queue", "persona", "'queue' is not one of fanout, delay-queue, replication"),
        (("payload",), {"format": "xml"}, "payload.format", "'xml' is not one of json, avro"),
        (("payload",), {"format": "json", "schema": {"type": "record"}}, "payload.schema", "takes no schema"),
        (("payload",), {"format": "avro"}, "payload.schema", "needs its Avro record schema"),
        (("payload",), {"max_bytes": 0}, "payload.max_bytes", "greater than or equal to 1"),
        (("targets", "primary", "keyspace"), "Demo", "targets.primary.keyspace", "CQL identifier"),
        (("targets", "primary", "table"), "t" * 49, "targets.primary.table", "CQL identifier"),
        (("targets", "primary", "key_column"), None, "targets.primary.key_column", "valid string"),
        (("targets", "primary", "columns", "amount", "field"), "", "targets.primary.columns.amount.field", "empty"),
        (
            ("targets", "primary", "columns", "customer"),
            {"type": "text", "field": 3},
            "targets.primary.columns.customer.field",
            "string",
        ),
        (
            ("targets", "primary", "replication_factor"),
            0,
            "targets.primary.replication_factor",
            "greater than or equal to 1",
        ),
        (
            ("targets", "primary", "type"),
            "mysql",
            "targets.primary.type",
            "'mysql' is not one of cassandra, elasticsearch, kafka",
        ),
        (("targets", "search", "index"), "_orders", "targets.search.index", "Elasticsearch index name"),
        (("targets", "search", "index"), "Orders", "targets.search.index", "Elasticsearch index name"),
        (("targets", "search", "index"), "my orders", "targets.search.index", "Elasticsearch index name"),
        (
            ("targets", "search", "fields", "amount"),
            "float",
            "targets.search.fields.amount",
            "'float' is not one of keyword",
        ),
        (("targets", "search", "replicas"), -1, "targets.search.replicas", "greater than or equal to 0"),
        (("retry", "tiers"), ["1s", "1s"], "retry.tiers[1]", "strictly increase"),
        (("retry", "tiers"), ["10s", "2 minutes"], "retry.tiers[1]", "duration '2 minutes'"),
        (("retry", "tiers"), [], "retry.tiers", "at least one"),
        (("retry", "backoff_multiplier"), 0.5, "retry.backoff_multiplier", "greater than or equal to 1"),
        (("retry", "max_attempts"), 0, "retry.max_attempts", "greater than or equal to 1"),
        (("throttle",), {"max_deletes_per_second": 0}, "throttle.max_deletes_per_second", "greater than 0"),
        (("authorization",), {"producers": ["svc", "svc"]}, "authorization.producers[1]", "listed twice"),
        (("targets",), {}, "targets", "at least one target"),
        (("targets",), {"Primary": {"type": "kafka", "topic": "x"}}, "targets.Primary", "target name"),
        (("targets",), {"out": {"type": "kafka", "topic": "bad topic"}}, "targets.out.topic", "Kafka topic"),
    ],
)
def test_each_broken_field_is_named(
    tmp_path: Path, path_in_document: tuple[str, ...], value: object, field: str, fragment: str
) -> None:
    document = orders_document()
    parent = document
    for key in path_in_document[:-1]:
        parent = parent.setdefault(key, {})
    parent[path_in_document[-1]] = value
    problems = fields_of(write(tmp_path, document))
    assert field in problems, problems
    assert fragment in problems[field]


@pytest.mark.parametrize(
    ("location", "key", "field"),
    [
        ((), "partitons", "partitons"),
        (("targets", "primary"), "colums", "targets.primary.colums"),
        (("targets", "primary", "columns", "amount"), "kind", "targets.primary.columns.amount.kind"),
        (("targets", "search"), "shard", "targets.search.shard"),
        (("retry",), "tierz", "retry.tierz"),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, location: tuple[str, ...], key: str, field: str) -> None:
    document = orders_document()
    parent = document
    for part in location:
        parent = parent.setdefault(part, {})
    parent[key] = 1
    problems = fields_of(write(tmp_path, document))
    assert problems[field].startswith("unknown key")


def test_a_misspelt_key_gets_a_suggestion(tmp_path: Path) -> None:
    document = orders_document()
    document["partitons"] = 3
    assert fields_of(write(tmp_path, document))["partitons"] == "unknown key (did you mean 'partitions'?)"


def test_missing_required_fields(tmp_path: Path) -> None:
    problems = fields_of(write(tmp_path, {"targets": {"primary": {"type": "cassandra", "keyspace": "k"}}}))
    assert problems["name"] == "is required"
    for field in ("table", "key_column", "columns"):
        assert problems[f"targets.primary.{field}"] == "is required"


def test_a_target_without_a_type(tmp_path: Path) -> None:
    problems = fields_of(write(tmp_path, {"name": "x", "targets": {"a": {"topic": "t"}}}))
    assert problems["targets.a.type"].startswith("is required")


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    document = orders_document()
    document["partitions"] = 0
    document["targets"]["search"]["shards"] = 0
    assert {"partitions", "targets.search.shards"} <= set(fields_of(write(tmp_path, document)))


def test_the_key_column_may_not_be_mapped_again(tmp_path: Path) -> None:
    document = orders_document()
    document["targets"]["primary"]["columns"]["id"] = {"type": "text"}
    assert "key column" in fields_of(write(tmp_path, document))["targets.primary.columns.id"]


# -- avro payloads --------------------------------------------------------------------------------------------------

ORDER_SCHEMA = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "customer", "type": "string"},
        {"name": "status", "type": "string"},
        {"name": "total", "type": "double"},
    ],
}


def avro_orders() -> dict[str, Any]:
    document = orders_document()
    document["payload"] = {"format": "avro", "schema": ORDER_SCHEMA}
    document["targets"]["primary"]["columns"]["amount"]["field"] = "total"
    document["targets"]["search"]["fields"] = {"customer": "keyword", "total": "double"}
    return document


def test_an_avro_payload_with_matching_fields_loads(tmp_path: Path) -> None:
    ns = load_namespace(write(tmp_path, avro_orders()))
    assert ns.payload.format == "avro" and ns.payload.avro_schema == ORDER_SCHEMA
    assert ns.payload.field_names() == frozenset({"customer", "status", "total"})
    primary = ns.targets_of_type("cassandra")["primary"]
    assert primary.column_fields()["amount"] == "total"


def test_mapped_fields_must_exist_in_the_avro_schema(tmp_path: Path) -> None:
    document = avro_orders()
    document["targets"]["primary"]["columns"]["amount"]["field"] = "amount"
    document["targets"]["search"]["fields"]["price"] = "double"
    problems = fields_of(write(tmp_path, document))
    assert "'amount' is not in the payload schema" in problems["targets.primary.columns.amount.field"]
    assert "'price' is not in the payload schema" in problems["targets.search.fields.price"]


@pytest.mark.parametrize(
    ("schema", "field", "fragment"),
    [
        ({"type": "string"}, "payload.schema.type", "is not 'record'"),
        ({"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]}, "payload.schema", "Avro"),
        ({"type": "record", "fields": []}, "payload.schema", "Avro"),
    ],
)
def test_an_invalid_avro_schema_is_named(tmp_path: Path, schema: dict[str, Any], field: str, fragment: str) -> None:
    document = orders_document()
    document["payload"] = {"format": "avro", "schema": schema}
    problems = fields_of(write(tmp_path, document))
    assert fragment in problems[field]


# -- file-level errors ----------------------------------------------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    assert [str(p) for p in problems_of(tmp_path / "absent.yaml")] == ["file not found"]


def test_a_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "name: orders\ntargets:\n  a: b: c\n"))
    assert problem.field == "" and "line 3, column 7" in problem.message
    assert "mapping values are not allowed" in problem.message


def test_a_duplicate_key_is_an_error(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "name: orders\npartitions: 3\npartitions: 4\n"))
    assert "duplicate key 'partitions'" in problem.message and "line 3" in problem.message


@pytest.mark.parametrize(("text", "fragment"), [("", "empty"), ("- a\n- b\n", "mapping, got list"), ("7\n", "got int")])
def test_the_top_level_must_be_a_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    (problem,) = problems_of(write(tmp_path, text))
    assert fragment in problem.message


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    write(tmp_path, orders_document(), "a.yaml")
    second = write(tmp_path, orders_document(), "b.yml")
    with pytest.raises(NamespaceError) as caught:
        load_namespaces(tmp_path)
    assert caught.value.path == second
    assert caught.value.problems == [Problem("name", f"namespace 'orders' is already defined in {tmp_path / 'a.yaml'}")]


def test_load_namespaces_reads_yaml_and_yml_and_ignores_other_files(tmp_path: Path) -> None:
    write(tmp_path, orders_document(), "orders.yaml")
    jobs = {"name": "jobs", "targets": {"out": {"type": "kafka", "topic": "jobs.due"}}}
    write(tmp_path, jobs, "jobs.yml")
    (tmp_path / "notes.txt").write_text("not a namespace")
    assert sorted(load_namespaces(tmp_path)) == ["jobs", "orders"]
    assert sorted(load_namespaces([tmp_path / "jobs.yml"])) == ["jobs"]


def test_parse_namespace_without_a_file() -> None:
    with pytest.raises(NamespaceError) as caught:
        parse_namespace({"name": "x"})
    assert caught.value.path is None and str(caught.value) == "targets: is required"


# -- helpers --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orders() -> Namespace:
    return load_namespace(ORDERS)


def test_resolve_targets(orders: Namespace) -> None:
    assert orders.resolve_targets([]) == ("primary", "search")
    assert orders.resolve_targets(["search"]) == ("search",)
    assert orders.resolve_targets(["search", "primary", "search"]) == ("primary", "search")


def test_resolve_targets_names_the_unknown_target(orders: Namespace) -> None:
    with pytest.raises(UnknownTargetError) as caught:
        orders.resolve_targets(["primary", "archive"])
    assert str(caught.value) == "namespace 'orders' has no target 'archive'; it declares: primary, search"
    assert caught.value.unknown == ("archive",)
    with pytest.raises(TypeError):
        orders.resolve_targets("primary")


def test_target_and_targets_of_type(orders: Namespace) -> None:
    assert isinstance(orders.target("search"), ElasticsearchTarget)
    with pytest.raises(UnknownTargetError, match="'nope'"):
        orders.target("nope")
    assert list(orders.targets_of_type("cassandra")) == ["primary"]
    assert list(orders.targets_of_type("elasticsearch")) == ["search"]
    assert orders.targets_of_type("kafka") == {}
    with pytest.raises(ValueError, match="redis"):
        orders.targets_of_type("redis")  # type: ignore[call-overload]


def test_non_canonical_tiers_are_normalised(tmp_path: Path) -> None:
    document = orders_document()
    document["retry"]["tiers"] = ["500ms", "60s", "3600s"]
    ns = load_namespace(write(tmp_path, document))
    assert ns.retry.tiers == ("500ms", "1m", "1h")
    assert ns.tier_delays_ms() == (500, 60_000, 3_600_000)


def _documented_keys() -> set[str]:
    """The keys in the first column of the table in examples/namespaces/README.md."""
    rows = (EXAMPLES / "README.md").read_text().splitlines()
    return {line.split("|")[1].strip().strip("`") for line in rows if line.startswith("| `")}


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _model_keys(annotation, key + ".")
        else:
            keys.add(key)
    return keys


def test_every_namespace_key_is_in_the_documented_table() -> None:
    assert _documented_keys() == _model_keys(Namespace)


def test_every_target_key_is_documented() -> None:
    text = (EXAMPLES / "README.md").read_text()
    for model in (CassandraTarget, ElasticsearchTarget, KafkaTarget):
        for name in model.model_fields:
            if name != "type":
                assert f"`{name}`" in text, f"{model.__name__}.{name} is not documented"
