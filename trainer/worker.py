"""`tailor worker`: an arq worker that runs fine-tuning jobs, one at a time by default.

Resources are built once in `on_startup` and passed through `ctx`. Jobs are JSON
(not pickle). arq's own retries are not the safety net: a job's lease is (service/jobs/lease.py),
so arq may deliver a job twice and the second delivery is a no-op.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Any

from arq import Worker, func

from service.core.db import make_engine, make_sessionmaker, run_migrations_async
from service.core.errors import ApiError
from service.core.registry import load_registry
from service.core.settings import Settings, get_settings
from service.core.storage import open_configured_store
from service.jobs.queue import TRAIN_FUNCTION, WorkQueue, dumps, redis_settings
from service.jobs.requeue import requeue_lost_jobs, requeue_unfinished_jobs
from trainer.context import WorkerContext
from trainer.metrics import serve_worker_metrics
from trainer.outcome import Outcome
from trainer.runner import run_job

log = logging.getLogger("tailor.worker")

JOB_TIMEOUT_SECONDS = 7 * 24 * 3600


async def run_fine_tuning_job(ctx: dict[str, Any], job_id: str) -> Outcome:
    outcome = await run_job(ctx["tailor"], job_id)
    log.info("job %s: %s", job_id, outcome)
    return outcome


async def reap_forever(w: WorkerContext) -> None:
    """Requeue jobs whose worker stopped renewing its lease (killed, lost its host)."""
    interval = max(1.0, w.settings.lease_seconds / 3)
    while True:
        try:
            await requeue_lost_jobs(w.sessionmaker, w.queue)
            await requeue_unfinished_jobs(w.sessionmaker, w.queue)
        except (ApiError, OSError) as exc:
            log.warning("lease reaper: %s", exc)
        await asyncio.sleep(interval)


def build_worker(settings: Settings, worker_id: str | None = None, max_jobs: int = 1) -> Worker:
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"

    async def on_startup(ctx: dict[str, Any]) -> None:
        url = settings.resolved_database_url
        if settings.migrate_on_start:
            await run_migrations_async(url)
        engine = make_engine(url)
        w = WorkerContext(
            settings=settings,
            worker_id=worker_id,
            sessionmaker=make_sessionmaker(engine),
            store=open_configured_store(settings),
            queue=WorkQueue(settings.redis_url, settings.queue_name),
            base_models=load_registry(settings.base_models_file),
        )
        ctx["tailor"], ctx["engine"] = w, engine
        ctx["reaper"] = asyncio.create_task(reap_forever(w))
        log.info("worker %s listening on %s", worker_id, settings.queue_name)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if "reaper" in ctx:
            ctx["reaper"].cancel()
        if "tailor" in ctx:
            await ctx["tailor"].queue.close()
        if "engine" in ctx:
            await ctx["engine"].dispose()

    return Worker(
        functions=[func(run_fine_tuning_job, name=TRAIN_FUNCTION, timeout=JOB_TIMEOUT_SECONDS, max_tries=1000)],
        queue_name=settings.queue_name,
        redis_settings=redis_settings(settings.redis_url),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        max_jobs=max_jobs,
        keep_result=0,
        poll_delay=0.5,
        job_serializer=dumps,
        job_deserializer=json.loads,
        handle_signals=True,
    )


def run_worker(queue: str | None = None, worker_id: str | None = None) -> None:
    settings = get_settings()
    if queue:
        settings = settings.model_copy(update={"queue_name": queue})
    if settings.worker_metrics_port:
        serve_worker_metrics(settings.worker_metrics_port)
        log.info("worker metrics on :%d/metrics", settings.worker_metrics_port)
    build_worker(settings, worker_id).run()
