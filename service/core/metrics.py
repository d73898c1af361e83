"""Prometheus primitives shared by the API's and the workers' metrics.

Each app and each worker has a registry of its own, so several apps in one process (tests,
the OpenAPI renderer) never collide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _metrics_app(registry: CollectorRegistry, healthy: Callable[[], bool]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body, status, kind = generate_latest(registry), "200 OK", CONTENT_TYPE_LATEST
        elif path == "/health":
            ok = healthy()
            body = b'{"status": "ok"}' if ok else b'{"status": "stalled"}'
            status, kind = ("200 OK" if ok else "503 Service Unavailable"), "application/json"
        else:
            body, status, kind = b"not found: try /metrics or /health\n", "404 Not Found", "text/plain"
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_metrics(
    port: int,
    registry: CollectorRegistry,
    *,
    host: str = "0.0.0.0",
    name: str = "tailor-metrics",
    healthy: Callable[[], bool] = lambda: True,
) -> WSGIServer:
    """A worker's /metrics and /health (503 while `healthy()` says no) on host:port, from a
    daemon thread; `.shutdown()` stops it. 0.0.0.0 by default: a pod's Prometheus scrapes it
    from outside."""
    server = make_server(
        host, port, _metrics_app(registry, healthy), server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
