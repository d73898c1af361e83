"""`tailor eval-worker`: an arq worker on the eval queue that runs eval runs and answers
graders/run. It needs no GPU: generation goes to vLLM over HTTP, and torch is loaded only
when a cosine criterion first needs the embedding model.

Runs are at-least-once like training jobs: the run row's lease decides who runs it, and a
reaper in every eval worker puts back on the queue the runs whose worker vanished and the
queued runs Redis lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from arq import Worker, func
from sqlalchemy.exc import SQLAlchemyError

from service.core.db import make_engine, make_sessionmaker, run_migrations_async
from service.core.errors import ApiError, InvalidRequest
from service.core.metrics import serve_metrics
from service.core.registry import load_registry
from service.core.settings import Settings, get_settings
from service.core.storage import open_configured_store
from service.evals import after_training, runs
from service.evals.embedding import EmbedderUnavailable, load_embedder
from service.evals.executor import EvalContext, execute_run, judge_for
from service.evals.graders import GradeResult, GradingTools, PythonSandbox, grade, make_sample, parse_grader
from service.evals.metrics import EvalMetrics
from service.evals.models import GenerationError, ModelClient
from service.jobs.queue import WorkQueue, dumps, redis_settings

log = logging.getLogger("tailor.evals")

RUN_TIMEOUT_SECONDS = 7 * 24 * 3600
# Eval runs one worker executes at once; each keeps `eval_concurrency` generations in flight.
MAX_RUNS = 4


async def run_eval(ctx: dict[str, Any], run_id: str) -> str:
    w: EvalContext = ctx["tailor"]
    w.metrics.in_progress.inc()
    try:
        outcome = await execute_run(w, run_id)
    finally:
        w.metrics.in_progress.dec()
    w.metrics.runs.labels(outcome).inc()
    log.info("eval run %s: %s", run_id, outcome)
    return outcome


async def run_grader(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """graders/run: the response body, or the error envelope and its status."""
    w: EvalContext = ctx["tailor"]
    try:
        grader = parse_grader(payload["grader"], param="grader")
        started = time.monotonic()
        result = await grade(grader, payload["item"], make_sample(payload["model_sample"]), w.tools_for(payload["project_id"]))
    except ApiError as exc:
        w.metrics.grader_calls.labels("refused").inc()
        return {"error": exc.envelope(), "status": exc.status_code}
    except GenerationError as exc:
        w.metrics.grader_calls.labels("refused").inc()
        return {"error": InvalidRequest(f"The judge model failed: {exc.message}", param="grader.model").envelope(), "status": 400}
    w.metrics.grader_calls.labels("ok").inc()
    return {"result": grader_response(result, time.monotonic() - started)}


def grader_response(result: GradeResult, seconds: float) -> dict[str, Any]:
    """RunGraderResponse as the spec shapes it."""
    tokens = sum(u.get("total_tokens", 0) for u in result.token_usage.values())
    return {
        "reward": result.score,
        "metadata": {
            "name": result.name,
            "type": result.type,
            "errors": result.errors,
            "execution_time": seconds,
            "scores": {result.name: result.score, **result.sub_rewards},
            "token_usage": tokens if result.token_usage else None,
            "sampled_model_name": next(iter(result.token_usage), None),
        },
        "sub_rewards": result.sub_rewards,
        "model_grader_token_usage_per_model": result.token_usage,
    }


class LazyEmbedder:
    """The cosine metric's embedding model, loaded (with torch) on its first use only."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._embed: Callable[[list[str]], list[list[float]]] | None = None

    def __call__(self, texts: list[str]) -> list[list[float]]:
        if self._embed is None:
            try:
                path = str(self.settings.embedding_model_path) if self.settings.embedding_model_path else None
                self._embed = load_embedder(path)
            except (ImportError, OSError, EmbedderUnavailable) as exc:
                raise InvalidRequest(
                    f"evaluation_metric 'cosine' is not available on this eval worker: {exc}", param="evaluation_metric"
                ) from exc
        return self._embed(texts)


async def reap_forever(w: EvalContext, queue: WorkQueue) -> None:
    interval = max(1.0, w.settings.lease_seconds / 3)
    while True:
        w.metrics.reaper_passed()
        try:
            async with w.sessionmaker() as session:
                lost, waiting = await runs.expired_runs(session), await runs.waiting_runs(session)
            for run_id in lost:
                log.warning("eval run %s: lease expired; requeued", run_id)
                await queue.requeue_lost(run_id, w.settings.eval_queue_name, runs.RUN_FUNCTION)
            for run_id in waiting:
                await queue.enqueue(run_id, w.settings.eval_queue_name, runs.RUN_FUNCTION)
            await after_training.follow(
                w.sessionmaker, w.store, w.models, queue, w.settings.public_url, w.settings.evaluation_wait_seconds
            )
        except (ApiError, OSError, SQLAlchemyError) as exc:
            log.warning("eval reaper: %s", exc)
        except Exception:  # a bug must not stop the reaper of every later run
            log.exception("eval reaper")
        await asyncio.sleep(interval)


def build_eval_worker(settings: Settings, worker_id: str | None = None, metrics: EvalMetrics | None = None) -> Worker:
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-evals"
    metrics = metrics or EvalMetrics()

    async def on_startup(ctx: dict[str, Any]) -> None:
        url = settings.resolved_database_url
        if settings.migrate_on_start:
            await run_migrations_async(url)
        engine = make_engine(url)
        sessionmaker = make_sessionmaker(engine)
        models = ModelClient(settings, load_registry(settings.base_models_file), sessionmaker)
        embed = LazyEmbedder(settings)
        sandbox = (
            PythonSandbox(timeout_seconds=settings.python_grader_timeout_seconds, memory_mib=settings.python_grader_memory_mib)
            if settings.python_grader
            else None
        )

        def tools_for(project_id: str) -> GradingTools:
            return GradingTools(judge=judge_for(models, project_id), embed=embed, python=sandbox)

        w = EvalContext(settings, worker_id, sessionmaker, open_configured_store(settings), models, tools_for, metrics)
        queue = WorkQueue(settings.redis_url, settings.eval_queue_name)
        ctx.update(tailor=w, engine=engine, queue=queue, reaper=asyncio.create_task(reap_forever(w, queue)))
        log.info("eval worker %s listening on %s", worker_id, settings.eval_queue_name)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if "reaper" in ctx:
            ctx["reaper"].cancel()
        if "queue" in ctx:
            await ctx["queue"].close()
        if "tailor" in ctx:
            await ctx["tailor"].models.aclose()
        if "engine" in ctx:
            await ctx["engine"].dispose()

    return Worker(
        functions=[
            func(run_eval, name=runs.RUN_FUNCTION, timeout=RUN_TIMEOUT_SECONDS, max_tries=1000),
            # Its caller waits on the result, so the result is kept (briefly).
            func(
                run_grader, name=runs.GRADER_FUNCTION, timeout=settings.grader_run_timeout_seconds, keep_result=300, max_tries=1
            ),
        ],
        queue_name=settings.eval_queue_name,
        redis_settings=redis_settings(settings.redis_url),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        max_jobs=MAX_RUNS + 4,
        keep_result=0,
        poll_delay=0.2,
        job_serializer=dumps,
        job_deserializer=json.loads,
        handle_signals=True,
    )


def run_eval_worker(worker_id: str | None = None) -> None:
    # One line per generation would drown the run's own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings, metrics = get_settings(), EvalMetrics()
    if settings.worker_metrics_port:
        serve_metrics(settings.worker_metrics_port, metrics.registry, name="tailor-eval-metrics", healthy=metrics.healthy)
        log.info("eval worker metrics on :%d/metrics", settings.worker_metrics_port)
    build_eval_worker(settings, worker_id, metrics).run()
