"""What the command handlers share: their errors, their messages, and how they find the stack."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

from connectors.endpoints import Endpoints
from connectors.local.errors import StackError
from connectors.provision import provision
from connectors.sqs.client import local_access
from streams.config import Settings, StackMode
from streams.namespaces import Namespace


class UsageError(ValueError):
    """A command was called with arguments that cannot work; the message says which."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def endpoints(settings: Settings, check: Sequence[str] = ("kafka",)) -> Endpoints:
    """Endpoints for commands that use a stack someone else keeps running (never started implicitly here).
    The services in ``check`` must accept walstream's credentials and TLS (``connectors.access``)."""
    from connectors.access import check_access

    found = find_endpoints(settings)
    check_access(found, check)
    return found


STORES_TOO = ("kafka", "cassandra", "elasticsearch")


def find_endpoints(settings: Settings) -> Endpoints:
    if settings.mode is StackMode.EXTERNAL:
        with provision(settings) as eps:
            return eps
    if settings.mode is StackMode.TESTCONTAINERS:
        raise StackError("containers live only as long as the process that started them; use `walstream run`")
    from connectors.local.stack import LocalStack

    stack = LocalStack(settings.local)
    missing = [name for name in stack.names if name not in stack.pids()]
    if missing:
        raise StackError(
            f"the local stack is not running ({', '.join(missing)} down); start it with `walstream stack up`"
        )
    endpoints = stack.endpoints()
    if settings.sqs.endpoint is not None:
        endpoints = replace(endpoints, sqs=local_access(settings.sqs.endpoint, settings.sqs.region))
    return endpoints


def namespaces(settings: Settings, paths: Sequence[str] | None) -> dict[str, Namespace]:
    from streams.namespaces import load_namespaces

    found = load_namespaces(list(paths) if paths else settings.runtime.namespace_dir)
    region = settings.region
    if region.name is None:
        return found
    try:
        return {name: ns.in_region(region.name, region.store_suffix) for name, ns in found.items()}
    except ValueError as exc:
        raise UsageError(f"WALSTREAM_REGION={region.name}: {exc}") from None


def region_endpoints(settings: Settings, local: Endpoints, region: str) -> Endpoints:
    """Where ``region``'s services answer (``WALSTREAM_REGION_ENDPOINTS``); what it does not say is as ``local``."""
    spec = settings.region.endpoints[region]
    host, port = local.cassandra_host, local.cassandra_port
    if spec.cassandra_contact is not None:
        host, _, text = spec.cassandra_contact.rpartition(":")
        port = int(text)
    return replace(
        local,
        kafka_bootstrap=spec.kafka_bootstrap,
        cassandra_host=host,
        cassandra_port=port,
        elasticsearch_url=spec.elasticsearch_url or local.elasticsearch_url,
    )
