"""`walstream api` as a user starts it: with default settings it listens on loopback only, and serving plaintext
beyond this machine says so at start."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from connectors.endpoints import Endpoints
from tests.integration.pipeline import api_process
from tests.integration.test_api_harness import (
    drop_created_topics,  # noqa: F401 - an autouse fixture
    write_namespace,
)

pytestmark = pytest.mark.integration


def _env(endpoints: Endpoints, folder: Path, **settings: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "WALSTREAM_NAMESPACE_DIR": str(folder),
        **settings,
    }


def _listening_addresses(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses TCP sockets of this machine listen on at ``port`` (from /proc/net/tcp and tcp6; an IPv6
    socket bound to an IPv4 address shows it mapped, and is reported as that IPv4 address)."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            hex_address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(hex_address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            found.add(address)
    return found


def _outward_address() -> str | None:
    """An address of this machine that is not loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_by_default_the_api_listens_on_loopback_only(endpoints: Endpoints, tmp_path: Path) -> None:
    write_namespace(tmp_path, endpoints.kafka_bootstrap)
    with api_process(_env(endpoints, tmp_path)) as api:
        port, lines = api.port, api.lines
        addresses = _listening_addresses(port)
        assert addresses and all(a.is_loopback for a in addresses), addresses
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        outward = _outward_address()
        if outward is not None:
            with pytest.raises(OSError), socket.create_connection((outward, port), timeout=10):
                pass
        assert not [line for line in lines if "plaintext" in line and "WARNING" in line.upper()], lines


def test_plaintext_beyond_loopback_is_a_warning_at_start(endpoints: Endpoints, tmp_path: Path) -> None:
    write_namespace(tmp_path, endpoints.kafka_bootstrap)
    with api_process(_env(endpoints, tmp_path, WALSTREAM_API_HOST="0.0.0.0")) as api:
        port, lines = api.port, api.lines
        addresses = _listening_addresses(port)
        assert addresses and all(a.is_unspecified for a in addresses), addresses
        warnings = [line for line in lines if '"warning"' in line and "plaintext" in line]
        assert warnings and "WALSTREAM_API_TLS_CERT" in warnings[0], lines
