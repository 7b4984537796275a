"""The worker's and the API's HTTP endpoints: /metrics for Prometheus, /healthz (liveness) and /readyz (readiness)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streams.metrics import Metrics

#: Returns (healthy, details); details are shown to whoever asks.
Check = Callable[[], tuple[bool, dict[str, object]]]


class HealthServer:
    """Serves on ``port`` (0 picks a free one; see ``port`` after start) from a daemon thread. ``metrics`` is the
    process's Metrics, or a registry of other collectors (the API's supervisor serves its children's)."""

    def __init__(
        self, metrics: Metrics | CollectorRegistry, live: Check, ready: Check, port: int, host: str = "127.0.0.1"
    ) -> None:
        registry = metrics.registry if isinstance(metrics, Metrics) else metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, details = (live if path == "/healthz" else ready)()
                    body = json.dumps({"ok": ok, **details}, default=str).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(f"cannot serve metrics and health on port {port}: {exc.strerror}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="walstream-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
