"""The FastAPI application: resources built once at start-up and kept on `app.state`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.chat.router import ChatShortcut
from service.chat.router import router as chat_router
from service.chat.service import open_gateway
from service.db import make_engine, make_sessionmaker, run_migrations_async
from service.errors import RequestIdMiddleware, install_error_handlers
from service.files.router import router as files_router
from service.files.uploads_router import router as uploads_router
from service.fine_tuning.router import router as fine_tuning_router
from service.fine_tuning.service import requeue_unfinished_jobs
from service.logs import RequestLogContextMiddleware
from service.metrics import install_api_metrics, open_redis_probe
from service.model_registry import load_registry
from service.models.router import router as models_router
from service.queue import WorkQueue
from service.settings import Settings, get_settings
from service.storage import open_store

log = logging.getLogger("tailor.app")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    url = settings.resolved_database_url
    if settings.migrate_on_start:
        await run_migrations_async(url)
    engine = make_engine(url)
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.store = open_store(
        settings.resolved_storage_url, s3_endpoint_url=settings.s3_endpoint_url, s3_region=settings.s3_region
    )
    app.state.base_models = load_registry(settings.base_models_file)
    app.state.queue = WorkQueue(settings.redis_url, settings.queue_name, settings.worker_pools)
    app.state.inference = open_gateway(settings, app.state.base_models)
    app.state.redis_probe = open_redis_probe(settings.redis_url)  # /ready and queue depths
    # Jobs created while Redis was away are put on the queue now (enqueueing is idempotent).
    requeue = asyncio.create_task(requeue_unfinished_jobs(app.state.sessionmaker, app.state.queue, every_queue=True))
    try:
        yield
    finally:
        requeue.cancel()
        await app.state.inference.aclose()
        await app.state.queue.close()
        await app.state.redis_probe.aclose()
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="Tailor",
        version="0.1.0",
        description="Self-hosted fine-tuning that speaks the OpenAI API.",
        lifespan=lifespan,
    )
    app.state.settings = settings or get_settings()
    install_error_handlers(app)
    # Middleware added last runs first: metrics see every response (crashes as 500s), and
    # log lines see the id RequestIdMiddleware sets, its own line about a crash included.
    # Innermost: the chat paths skip FastAPI's routing (service/chat/router.py says why).
    app.add_middleware(ChatShortcut, routes={"/v1" + route.path: route for route in chat_router.routes})
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(RequestLogContextMiddleware)
    install_api_metrics(app)
    for router in (files_router, uploads_router, fine_tuning_router, models_router, chat_router):
        app.include_router(router, prefix="/v1")

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        """Liveness: the process answers (no I/O). Readiness is /ready."""
        return {"status": "ok"}

    return app
