"""Prometheus metrics: the API's `/metrics` and `/ready`, and a worker's metrics server.

API: every request is timed by method, route template (never the raw path, so no ids
become labels) and status. Queue depths, job counts by status and whether the database
and Redis answer are read when `/metrics` is scraped, in its (async) handler, and set on
gauges; collectors never do I/O of their own.

Worker: job outcomes and durations, jobs in progress and training throughput, served on
TAILOR_WORKER_METRICS_PORT by a small threaded HTTP server (`/metrics` and `/health`).

Each app and each worker has a registry of its own, so several apps in one process (tests,
the OpenAPI renderer) never collide.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from functools import lru_cache
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy import func, select, text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceUnavailable
from service.fine_tuning import lifecycle as lc
from service.settings import Settings
from service.tables import FineTuningJob

log = logging.getLogger("tailor.metrics")

# Seconds; chat completions (and streams, timed to their last chunk) can take minutes.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200)
JOB_STATUSES = (lc.VALIDATING, lc.QUEUED, lc.RUNNING, lc.PAUSED, lc.SUCCEEDED, lc.FAILED, lc.CANCELLED)
PROBE_TIMEOUT = 5.0
UNMATCHED_ROUTE = "unmatched"


def _new_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# --- API ------------------------------------------------------------------------------


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
        self.registry = _new_registry()
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
        for status in sorted(set(JOB_STATUSES) | set(counts)):
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


def queue_names(settings: Settings, base_models: dict[str, Any]) -> list[str]:
    """Every queue jobs may wait on: the default one, each worker pool's, and any a base model names."""
    named = [getattr(spec, "queue", None) for spec in base_models.values()]
    return list(dict.fromkeys([settings.queue_name, *(p.queue for p in settings.worker_pools), *(q for q in named if q)]))


async def queue_depths(redis: aioredis.Redis, names: list[str]) -> dict[str, int]:
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcard(name)
        depths = await pipe.execute()
    return {name: int(depth) for name, depth in zip(names, depths, strict=True)}


async def job_counts(sessionmaker: Any) -> dict[str, int]:
    async with sessionmaker() as session:
        rows = await session.execute(select(FineTuningJob.status, func.count()).group_by(FineTuningJob.status))
        return {status: int(n) for status, n in rows.tuples()}


def open_redis_probe(redis_url: str) -> aioredis.Redis:
    """A Redis client for readiness and queue depths; it connects on first use, with short timeouts."""
    return aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)


class RequestMetricsMiddleware:
    """Times every HTTP request. Plain ASGI, outermost, so it sees the status of every
    response (crashes included, after RequestIdMiddleware turned them into a 500)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe_request(scope["method"], route_template(scope), status, time.perf_counter() - started)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format; no auth (keep it off the public network)."""
    api_metrics: ApiMetrics = request.app.state.metrics
    await api_metrics.refresh(request.app)
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/ready", include_in_schema=False)
async def ready(request: Request) -> dict[str, str]:
    """200 when the database and Redis answer; 503 (OpenAI envelope) naming what did not."""
    app = request.app

    async def database() -> None:
        async with app.state.sessionmaker() as session:
            await session.execute(text("SELECT 1"))

    async def redis() -> None:
        await app.state.redis_probe.ping()

    checks = {"the database": database(), "Redis": redis()}
    results = await asyncio.gather(*(asyncio.wait_for(c, PROBE_TIMEOUT) for c in checks.values()), return_exceptions=True)
    failed = [(name, r) for name, r in zip(checks, results, strict=True) if r is not None]
    for name, exc in failed:
        log.warning("not ready: %s did not answer: %r", name, exc)
    if failed:
        # Details (hosts, ports) go to the log only: /ready answers anyone.
        raise ServiceUnavailable("Not ready: " + "; ".join(f"{n} did not answer ({type(e).__name__})" for n, e in failed) + ".")
    return {"status": "ready"}


def install_api_metrics(app: FastAPI) -> None:
    """Time every request, and serve /metrics and /ready. Call it after the other middleware."""
    app.state.metrics = ApiMetrics()
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    app.include_router(router)


# --- worker ---------------------------------------------------------------------------

# "error": the run raised (the database went away mid-job, a bug); arq logs the trace.
OUTCOMES = ("succeeded", "failed", "cancelled", "paused", "lease_lost", "error")


def outcome_label(outcome: str) -> str:
    """The label for a word `run_job` returns: "failed (files)" -> failed, "lease lost" ->
    lease_lost, "stopped (job is cancelled)" / "ended (cancelled)" -> cancelled."""
    word, _, detail = outcome.partition(" (")
    word = word.strip().replace(" ", "_")
    if word in ("stopped", "ended"):
        status = detail.rstrip(")").removeprefix("job is ").strip()
        return status if status in OUTCOMES else "stopped"
    return word if word in OUTCOMES else "other"


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or _new_registry()
        self.jobs = Counter(
            "tailor_worker_jobs", "Jobs this worker ran, by method and outcome.", ["method", "outcome"], registry=self.registry
        )
        self.job_duration = Histogram(
            "tailor_worker_job_duration_seconds",
            "Wall time of a job's run on this worker (one run: a paused or requeued job runs again), by method and outcome.",
            ["method", "outcome"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge("tailor_worker_jobs_in_progress", "Jobs this worker is running now.", registry=self.registry)
        self.tokens_per_second = Gauge(
            "tailor_worker_training_tokens_per_second",
            "Training throughput: tokens per second over the latest step, summed over the jobs running now.",
            registry=self.registry,
        )
        self.trained_tokens = Counter(
            "tailor_worker_trained_tokens", "Tokens trained on by this worker, by method.", ["method"], registry=self.registry
        )
        self._rates: dict[str, float] = {}

    def job_started(self) -> None:
        self.in_progress.inc()

    def job_finished(self, job_id: str, method: str, outcome: str, seconds: float) -> None:
        label = outcome_label(outcome)
        self.in_progress.dec()
        self.jobs.labels(method, label).inc()
        self.job_duration.labels(method, label).observe(seconds)
        self._rates.pop(job_id, None)
        self.tokens_per_second.set(sum(self._rates.values()))

    def step(self, job_id: str, method: str, tokens: int, seconds: float | None) -> None:
        """`tokens` trained since the previous step report, `seconds` since it (None: unknown)."""
        if tokens > 0:
            self.trained_tokens.labels(method).inc(tokens)
        if seconds and seconds > 0:
            self._rates[job_id] = tokens / seconds
            self.tokens_per_second.set(sum(self._rates.values()))


@lru_cache
def worker_metrics() -> WorkerMetrics:
    """This process's worker metrics (what `serve_worker_metrics` shows by default)."""
    return WorkerMetrics()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (scrapes would flood the log)
        pass


def _worker_app(registry: CollectorRegistry) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body, status, kind = generate_latest(registry), "200 OK", CONTENT_TYPE_LATEST
        elif path == "/health":
            body, status, kind = b'{"status": "ok"}', "200 OK", "application/json"
        else:
            body, status, kind = b"not found: try /metrics or /health\n", "404 Not Found", "text/plain"
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_worker_metrics(port: int, host: str = "0.0.0.0", metrics: WorkerMetrics | None = None) -> WSGIServer:
    """Serve /metrics and /health on host:port from a daemon thread; `.shutdown()` stops it.
    0.0.0.0 by default: a scraper (a pod's Prometheus) reaches the worker from outside."""
    registry = (metrics or worker_metrics()).registry
    server = make_server(host, port, _worker_app(registry), server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="tailor-worker-metrics", daemon=True).start()
    return server
