"""The FastAPI application: resources built once at start-up and kept on `app.state`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api import health
from service.api import metrics as api_metrics
from service.api.auth import document_bearer_auth, forget_all_keys, forget_key
from service.api.auth import router as auth_router
from service.api.chat.fast_path import ChatShortcut, RelayRoute
from service.api.chat.router import router as chat_router
from service.api.dashboard.router import router as dashboard_router
from service.api.errors import install_error_handlers
from service.api.evals.router import router as evals_router
from service.api.files.janitor import sweep_forever
from service.api.files.router import router as files_router
from service.api.files.uploads_router import router as uploads_router
from service.api.fine_tuning.permissions import router as permissions_router
from service.api.fine_tuning.router import router as fine_tuning_router
from service.api.gateway import open_gateway
from service.api.graders.router import router as graders_router
from service.api.middleware import RequestMiddleware
from service.api.models.router import router as models_router
from service.api.rate_limit import RateLimiter
from service.api.revocations import follow_revocations
from service.core.db import make_engine, make_sessionmaker, run_migrations_async
from service.core.registry import load_registry
from service.core.settings import Settings, get_settings
from service.core.storage import open_configured_store
from service.jobs.queue import WorkQueue
from service.jobs.requeue import reconcile_forever
from service.webhooks.delivery import deliver_forever

log = logging.getLogger("tailor.app")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    url = settings.resolved_database_url
    if settings.migrate_on_start:
        await run_migrations_async(url)
    engine = make_engine(url, settings.database_pool_size, settings.database_max_overflow)
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.store = open_configured_store(settings)
    app.state.base_models = load_registry(settings.base_models_file)
    app.state.queue = WorkQueue(settings.redis_url, settings.queue_name, settings.worker_pools, connect_retries=0)
    app.state.inference = open_gateway(settings, app.state.base_models)
    app.state.redis_probe = api_metrics.open_redis_probe(settings.redis_url)  # /ready and queue depths
    # Jobs created while Redis was away are put on the queue now and every few seconds.
    requeue = asyncio.create_task(reconcile_forever(app.state.sessionmaker, app.state.queue, settings.reconcile_interval_seconds))
    janitor = asyncio.create_task(
        sweep_forever(
            app.state.sessionmaker,
            app.state.store,
            interval=settings.janitor_interval_seconds,
            grace_seconds=settings.janitor_grace_seconds,
        )
    )
    revocations = asyncio.create_task(follow_revocations(settings.redis_url, forget_key, forget_all_keys))
    webhooks = asyncio.create_task(deliver_forever(app.state.sessionmaker, settings, app.state.metrics.webhook_outcome))
    try:
        yield
    finally:
        webhooks.cancel()
        revocations.cancel()
        janitor.cancel()
        requeue.cancel()
        await app.state.inference.aclose()
        await app.state.queue.close()
        await app.state.redis_probe.aclose()
        if app.state.rate_limiter is not None:
            await app.state.rate_limiter.aclose()
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="Tailor",
        version="0.1.0",
        description="Self-hosted fine-tuning that speaks the OpenAI API.",
        lifespan=lifespan,
    )
    app.state.settings = settings or get_settings()
    app.state.metrics = api_metrics.ApiMetrics()
    install_error_handlers(app)
    # Middleware added last runs first. Innermost: the chat paths skip FastAPI's routing
    # (service/api/chat/fast_path.py says why); outside it, every request's id, log
    # context, crash envelope, metrics and access line.
    relayed = {"/v1" + route.path: route for route in chat_router.routes if isinstance(route, RelayRoute)}
    app.add_middleware(ChatShortcut, routes=relayed)
    settings = app.state.settings
    limiter = RateLimiter(settings.redis_url, settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None
    app.state.rate_limiter = limiter
    if settings.cors_allow_origins:
        # Closed unless the operator names origins: a browser page elsewhere cannot use a key.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests"],
        )
    app.add_middleware(RequestMiddleware, metrics=app.state.metrics, limiter=limiter, admitted=settings.max_concurrent_requests)
    for router in (
        files_router,
        uploads_router,
        fine_tuning_router,
        permissions_router,
        graders_router,
        models_router,
        chat_router,
        evals_router,
        auth_router,
    ):
        app.include_router(router, prefix="/v1")
    app.include_router(health.router)
    app.include_router(dashboard_router)  # `/` and `/ui/…`: the web dashboard, on the same public API
    app.include_router(api_metrics.router)
    document_bearer_auth(app)
    return app
