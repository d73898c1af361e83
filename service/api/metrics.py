"""The API's Prometheus metrics and its `/metrics` route.

Every request is timed by method, route template (never the raw path, so no ids become
labels) and status, by service/api/middleware.py. Queue depths, job counts by status and
whether the database and Redis answer are read when `/metrics` is scraped, in its (async)
handler, and set on gauges; collectors never do I/O of their own.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import Scope

from service.core.errors import Unauthorized
from service.core.metrics import new_registry
from service.core.registry import BaseModelSpec
from service.core.settings import Settings
from service.core.tables import FineTuningJob
from service.jobs.lifecycle import STATUSES

log = logging.getLogger("tailor.metrics")

# Seconds; chat completions (and streams, timed to their last chunk) can take minutes.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PROBE_TIMEOUT = 5.0
UNMATCHED_ROUTE = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/v1/files/{file_id}`), or `unmatched`.

    FastAPI hands the route as declared on its router (`/files/{file_id}`, no include
    prefix); the prefix is what the raw path has before the route's own part."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED_ROUTE
    path = scope.get("path", "")
    try:
        rendered = template.format(**scope.get("path_params", {}))
    except (KeyError, IndexError, ValueError):
        return template
    if rendered and path.endswith(rendered):
        return path[: len(path) - len(rendered)] + template
    return template


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = new_registry()
        self.requests = Histogram(
            "tailor_http_request_duration_seconds",
            "Time to answer an API request (streams: to their last chunk), by method, route template and status.",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "tailor_queue_depth",
            "Jobs in an arq queue (a Redis sorted set) at scrape time; a job a worker has started stays in it until it ends.",
            ["queue"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "tailor_jobs", "Fine-tuning jobs by status, all projects, at scrape time.", ["status"], registry=self.registry
        )
        self.up = Gauge(
            "tailor_dependency_up",
            "1 when the dependency answered at scrape time, else 0.",
            ["dependency"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "tailor_webhook_delivery_attempts",
            "Webhook delivery attempts this API process made, by outcome (delivered, retry, failed: given up).",
            ["outcome"],
            registry=self.registry,
        )

    def webhook_outcome(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).observe(seconds)

    async def refresh(self, app: FastAPI) -> None:
        """Read what the gauges show from the database and Redis (each bounded in time)."""
        await asyncio.gather(self._refresh_jobs(app), self._refresh_queues(app))

    async def _refresh_jobs(self, app: FastAPI) -> None:
        try:
            counts = await asyncio.wait_for(job_counts(app.state.sessionmaker), PROBE_TIMEOUT)
        except Exception as exc:  # a scrape reports the failure; it never fails itself
            log.warning("metrics: the database did not answer: %s", exc)
            self.up.labels("database").set(0)
            self.jobs.clear()
            return
        self.up.labels("database").set(1)
        for status in sorted(set(STATUSES) | set(counts)):
            self.jobs.labels(status).set(counts.get(status, 0))

    async def _refresh_queues(self, app: FastAPI) -> None:
        names = queue_names(app.state.settings, app.state.base_models)
        try:
            depths = await asyncio.wait_for(queue_depths(app.state.redis_probe, names), PROBE_TIMEOUT)
        except Exception as exc:
            log.warning("metrics: Redis did not answer: %s", exc)
            self.up.labels("redis").set(0)
            self.queue_depth.clear()
            return
        self.up.labels("redis").set(1)
        for name, depth in depths.items():
            self.queue_depth.labels(name).set(depth)


def queue_names(settings: Settings, base_models: dict[str, BaseModelSpec]) -> list[str]:
    """Every queue jobs may wait on: the default one, each worker pool's, and any a base model names."""
    named = [spec.queue for spec in base_models.values() if spec.queue]
    return list(dict.fromkeys([settings.queue_name, *(p.queue for p in settings.worker_pools), *named]))


async def queue_depths(redis: aioredis.Redis, names: list[str]) -> dict[str, int]:
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcard(name)
        depths = await pipe.execute()
    return {name: int(depth) for name, depth in zip(names, depths, strict=True)}


async def job_counts(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessionmaker() as session:
        rows = await session.execute(select(FineTuningJob.status, func.count()).group_by(FineTuningJob.status))
        return {status: int(n) for status, n in rows.tuples()}


def open_redis_probe(redis_url: str) -> aioredis.Redis:
    """A Redis client for readiness and queue depths; it connects on first use, with short timeouts."""
    return aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format. Open unless TAILOR_METRICS_TOKEN is set (then a bearer token
    of its own, not an API key: Prometheus is not a project)."""
    token = request.app.state.settings.metrics_token
    if token and not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
        raise Unauthorized("GET /metrics needs `Authorization: Bearer <TAILOR_METRICS_TOKEN>`.", code="invalid_metrics_token")
    api_metrics: ApiMetrics = request.app.state.metrics
    await api_metrics.refresh(request.app)
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)
