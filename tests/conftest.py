"""Session fixtures: the endpoints of the active stack mode, started on first use and stopped afterwards."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.endpoints import Endpoints
from connectors.provision import provision
from streams.config import Settings, load_settings

IMAGE_TESTS = Path(__file__).resolve().parent / "image"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--image",
        metavar="NAME:TAG",
        help="run the container image's tests (tests/image) on this podman image; `make image-test` passes it",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/image needs a built image and podman: it is collected with --image only (`make image-test`)."""
    if collection_path == IMAGE_TESTS and not config.getoption("--image"):
        return True
    return None


def _say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def endpoints(settings: Settings) -> Iterator[Endpoints]:
    """Kafka, Cassandra and Elasticsearch of the configured mode; only what this session started is stopped."""
    with provision(settings, progress=_say) as eps:
        yield eps


@pytest.fixture
def unique_name() -> str:
    """A fresh name for a topic, keyspace or index, so tests never see each other's data."""
    return f"t{uuid.uuid4().hex[:12]}"
