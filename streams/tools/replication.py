"""`walstream replication status NS`: per direction between the namespace's regions, the replicated topic,
MirrorMaker 2's state and the lag in records and seconds."""

from __future__ import annotations

import argparse
import json
from typing import Any

from connectors.endpoints import KafkaAccess
from connectors.kafka.mirror import heartbeat_age, replica_lag
from streams.config import Settings, load_settings
from streams.tools.common import UsageError, namespaces

#: MirrorMaker 2 sends a heartbeat a second; none for this long means it is not replicating that direction.
STALLED_AFTER_S = 30.0


def direction_rows(settings: Settings, name: str) -> list[dict[str, Any]]:
    """One row per direction (source -> target) between the regions of namespace ``name`` that the settings know."""
    found = namespaces(settings, None)
    ns = found.get(name)
    if ns is None:
        raise UsageError(f"unknown namespace {name!r}; {settings.runtime.namespace_dir} has {', '.join(sorted(found))}")
    if ns.replication is None:
        raise UsageError(f"namespace {name!r} has no replication section: it lives in one region")
    known = settings.region.endpoints
    missing = [r for r in ns.replication.regions if r not in known]
    if missing:
        raise UsageError(f"WALSTREAM_REGION_ENDPOINTS does not say where region(s) {', '.join(missing)} answer")
    log = f"wal.{name}"
    rows = []
    for source in ns.replication.regions:
        for target in ns.replication.regions:
            if source == target:
                continue
            src = KafkaAccess(known[source].kafka_bootstrap, settings.kafka)
            dst = KafkaAccess(known[target].kafka_bootstrap, settings.kafka)
            age = heartbeat_age(dst, source)
            if age is None:
                state = "absent (no heartbeat from the source ever arrived)"
            elif age > STALLED_AFTER_S:
                state = f"stalled (last heartbeat {age:.0f}s ago)"
            else:
                state = "running"
            lags = replica_lag(src, log, dst, f"{source}.{log}")
            rows.append(
                {
                    "direction": f"{source} -> {target}",
                    "topic": f"{source}.{log}",
                    "mirrormaker": state,
                    "lag_records": sum(p.records for p in lags),
                    "lag_seconds": round(max((p.seconds for p in lags), default=0.0), 3),
                }
            )
    return rows


def replication_status(args: argparse.Namespace) -> int:
    rows = direction_rows(load_settings(), args.namespace)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'direction':<18} {'replicated topic':<36} {'lag (records)':>13} {'lag (s)':>9}  mirrormaker")
        for row in rows:
            print(
                f"{row['direction']:<18} {row['topic']:<36} {row['lag_records']:>13} {row['lag_seconds']:>9.1f}  "
                f"{row['mirrormaker']}"
            )
    return 0 if all(row["mirrormaker"] == "running" for row in rows) else 1


def add_parsers(sub: Any) -> None:
    replication = sub.add_parser("replication", help="cross-region replication of a namespace's log")
    actions = replication.add_subparsers(dest="replication_action", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="per direction: the replicated topic, MirrorMaker 2's state, the lag in records and seconds "
        "(exit 1 unless MirrorMaker 2 runs in every direction)",
    )
    status.add_argument("namespace")
    status.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    status.set_defaults(handler=replication_status)
