"""Where the API listens: an exclusive probe of its port first, so a port already taken is a clear error."""

from __future__ import annotations

import errno
import socket


class ListenError(RuntimeError):
    """The API cannot listen where it was told to; the message names the address and what to do."""


def claim_port(host: str, port: int) -> int:
    """Bind ``host:port`` alone (no SO_REUSEPORT) and let it go again: raises ListenError when another process
    listens there, and returns the port, a free one picked by the kernel when ``port`` is 0.

    gRPC's own bind error does not say why, and with SO_REUSEPORT a second server on the port of another of the
    same user's servers would not fail at all: it would silently take a share of that server's connections."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # Like gRPC's own socket: a port whose old connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(
                    f"cannot listen on {host}:{port}: the port is already in use by another process; stop it, or "
                    f"choose another port (--port or WALSTREAM_API_PORT)"
                ) from None
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return int(probe.getsockname()[1])
