"""Namespaces: the frozen spec types (``spec``) and the YAML loader (``load``)."""

from streams.namespaces.load import NamespaceError, load_namespace, load_namespaces, parse_namespace
from streams.namespaces.spec import (
    CassandraTarget,
    ElasticsearchTarget,
    KafkaTarget,
    Namespace,
    PayloadSpec,
    Problem,
    UnknownTargetError,
)

__all__ = [
    "CassandraTarget",
    "ElasticsearchTarget",
    "KafkaTarget",
    "Namespace",
    "NamespaceError",
    "PayloadSpec",
    "Problem",
    "UnknownTargetError",
    "load_namespace",
    "load_namespaces",
    "parse_namespace",
]
