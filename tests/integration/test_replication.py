"""Cross-region replication on real servers: two Kafka clusters, MirrorMaker 2 both ways, a worker per region,
and each region's own keyspace and index. Active-active convergence with equal-sequence ties, no loops, a frozen
region, a killed MirrorMaker 2, and a writer failing over to the other region."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from connectors.local.stack import LocalStack
from streams.config import Settings
from tests.integration.pipeline import own_stack, wait_until
from tests.integration.replication import (
    REGION_SERVICES,
    REGIONS,
    Region,
    ReplicatedNamespace,
    all_ids,
    announced,
    converged,
    create_replicated,
    differences,
    entry_ids,
    model_of,
    records,
    regions_of,
    running,
    workload,
    write,
)

pytestmark = pytest.mark.integration

CONVERGE_S = 300.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def pair(settings: Settings) -> Iterator[LocalStack]:
    """Two Kafka clusters and MirrorMaker 2 of this module's own (tests freeze and kill them)."""
    local = settings.local.model_copy(update={"regions": 2})
    with own_stack(local, "walstream-repl-", services=REGION_SERVICES, progress=_say) as stack:
        yield stack


@pytest.fixture
def regions(pair: LocalStack, endpoints: Endpoints) -> dict[str, Region]:
    return regions_of(pair, endpoints)


@pytest.fixture
def rns(regions: dict[str, Region], tmp_path: Path) -> ReplicatedNamespace:
    return create_replicated(regions, tmp_path / "namespaces")


def _converge(rns: ReplicatedNamespace, written: dict, session: Session, es: Elasticsearch) -> None:  # type: ignore[type-arg]
    model = model_of(written)
    wait_until(
        lambda: converged(rns, model, session, es),
        CONVERGE_S,
        "all four stores to hold the last-writer-wins model",
        lambda: differences(rns, model, session, es) + "\n" + rns.logs(),
    )


def _no_loops(rns: ReplicatedNamespace, written: dict) -> None:  # type: ignore[type-arg]
    """Every replicated log holds exactly its source's records; no entry is twice in a region's logs; nothing
    was replicated back; no entry was announced twice in a region."""
    log = f"wal.{rns.name}"
    for region in REGIONS:
        other = next(r for r in REGIONS if r != region)
        here, there = rns.regions[region].kafka, rns.regions[other].kafka
        source = entry_ids(here, log)
        assert sorted(source) == sorted(e.entry_id for e in written[region])
        wait_until(
            lambda: len(records(there, f"{region}.{log}")) == len(source),
            120,
            f"{region}'s log to be replicated whole into {other}",
        )
        assert sorted(entry_ids(there, f"{region}.{log}")) == sorted(source)
        seen = entry_ids(here, log) + entry_ids(here, f"{other}.{log}")
        assert len(seen) == len(set(seen)) == len(set(all_ids(written)))
        assert records(here, f"{other}.{region}.{log}") == []  # never replicated back
        twice = {entry: n for entry, n in announced(here, f"{log}.cdc").items() if n > 1}
        assert twice == {}, f"entries announced more than once in {region}: {list(twice.items())[:5]}"


def test_active_active_writes_converge_in_all_four_stores_without_loops(
    rns: ReplicatedNamespace, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    written = workload(rns.name, 3000, keys=300, seed=13)
    ties = sum(1 for e in written["east"] if e.sequence in {w.sequence for w in written["west"]})
    assert ties >= 100
    with running(rns, tmp_path, session, es):
        write(rns, written)
        _converge(rns, written, session, es)
        _no_loops(rns, written)


def test_a_frozen_region_catches_up_and_converges(
    rns: ReplicatedNamespace, pair: LocalStack, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    written = workload(rns.name, 2000, keys=200, seed=14)
    before = {r: entries[:300] for r, entries in written.items()}
    after = {"east": written["east"][300:], "west": []}
    late_west = {"east": [], "west": written["west"][300:]}
    with running(rns, tmp_path, session, es):
        write(rns, before)
        _converge(rns, before, session, es)
        pair.signal_service("kafka-west", signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            # East keeps taking writes while west does not answer at all.
            while time.monotonic() - frozen_at < 30:
                chunk = after["east"][:200]
                after["east"] = after["east"][200:]
                if chunk:
                    write(rns, {"east": chunk})
                time.sleep(1)
            write(rns, after)
        finally:
            pair.signal_service("kafka-west", signal.SIGCONT)
        write(rns, late_west)
        _converge(rns, written, session, es)
        _no_loops(rns, written)


def test_mirrormaker_killed_mid_stream_and_restarted_loses_nothing(
    rns: ReplicatedNamespace, pair: LocalStack, stores: tuple[Session, Elasticsearch], tmp_path: Path
) -> None:
    session, es = stores
    written = workload(rns.name, 3000, keys=300, seed=15)
    with running(rns, tmp_path, session, es):
        writer = threading.Thread(target=write, args=(rns, written))
        writer.start()
        # Killed once replication is under way, while writes are still arriving.
        wait_until(
            lambda: len(records(rns.regions["west"].kafka, f"east.wal.{rns.name}")) > 0,
            120,
            "replication to begin",
        )
        pair.signal_service("mirrormaker", signal.SIGKILL)
        writer.join(timeout=300)
        assert not writer.is_alive()
        wait_until(lambda: "mirrormaker" not in pair.pids(), 60, "MirrorMaker 2 to be gone")
        started = pair.up()
        assert started.started == ["mirrormaker"]
        _converge(rns, written, session, es)
        # MM2 may copy a record twice after a crash (at-least-once); the entry is still applied once per region.
        for region in REGIONS:
            log = f"wal.{rns.name}"
            twice = {e: n for e, n in announced(rns.regions[region].kafka, f"{log}.cdc").items() if n > 1}
            assert twice == {}
