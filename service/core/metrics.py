"""Prometheus primitives shared by the API's and the workers' metrics.

Each app and each worker has a registry of its own, so several apps in one process (tests,
the OpenAPI renderer) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
