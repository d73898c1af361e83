"""The arq work queue on Redis. Redis carries work and signals, never truth: the job row does.

The arq job id is the fine-tuning job id, so enqueueing the same job twice is a no-op while
it waits, and a worker can find the job from its arq id.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from redis.exceptions import RedisError

from service.core.errors import BackendUnavailable, InvalidRequest
from service.core.registry import BaseModelSpec
from service.core.settings import WorkerPool

log = logging.getLogger("tailor.queue")

# The arq function name a worker registers to run fine-tuning jobs.
TRAIN_FUNCTION = "run_fine_tuning_job"
Signal = Literal["cancel", "pause"]


def signal_key(job_id: str) -> str:
    """The Redis key that carries a job's stop signal."""
    return f"tailor:signal:{job_id}"


def redis_settings(redis_url: str, connect_retries: int = 2) -> RedisSettings:
    settings = RedisSettings.from_dsn(redis_url)
    settings.conn_retries = connect_retries
    settings.conn_timeout = 2
    return settings


def dumps(obj: object) -> bytes:
    """arq job serializer: JSON, never pickle."""
    return json.dumps(obj).encode()


async def connect(redis_url: str, connect_retries: int = 2) -> ArqRedis:
    settings = redis_settings(redis_url, connect_retries)
    return await create_pool(settings, job_serializer=dumps, job_deserializer=json.loads)


async def enqueue_training(redis: ArqRedis, queue_name: str, job_id: str, function: str = TRAIN_FUNCTION) -> bool:
    """Put a job (or an eval run: `function` names what runs it) on the queue. Returns False
    when it is already waiting there."""
    # A finished arq run leaves a result key that would block a second run of the same id
    # (resume after pause, requeue after a lost worker); the job row is the truth, so drop it.
    await redis.delete(result_key_prefix + job_id)
    job = await redis.enqueue_job(function, job_id, _job_id=job_id, _queue_name=queue_name)
    return job is not None


async def requeue_lost(redis: ArqRedis, queue_name: str, job_id: str, function: str = TRAIN_FUNCTION) -> None:
    """Make a job whose worker died runnable again. arq keeps a started job in the queue
    with an in-progress marker until it finishes; dropping the marker lets another worker
    take it, and a job that left the queue altogether is enqueued afresh."""
    await redis.delete(in_progress_key_prefix + job_id)
    if not await redis.exists(job_key_prefix + job_id):
        await enqueue_training(redis, queue_name, job_id, function)


async def send_signal(redis: ArqRedis, job_id: str, signal: Signal) -> None:
    """Tell the worker running `job_id` to stop: it reads the key every poll, and the key
    survives a worker that is busy at the moment it is set."""
    await redis.set(signal_key(job_id), signal, ex=24 * 3600)


async def clear_signal(redis: ArqRedis, job_id: str) -> None:
    await redis.delete(signal_key(job_id))


def queue_for(spec: BaseModelSpec, pools: list[WorkerPool], default: str) -> str:
    """The queue a job on `spec` goes to: the smallest worker pool whose workers own the
    GPUs its training needs (fewest GPUs, then least memory), so big GPUs stay free for the
    jobs that need them. No pools configured: `default`, the one queue of a single box."""
    if spec.queue:
        return spec.queue
    if not pools:
        return default
    fits = [p for p in pools if p.gpu_count >= spec.gpu_count and p.gpu_memory_gb >= spec.gpu_memory_gb]
    if not fits:
        offered = "; ".join(f"{p.queue}: {p.gpu_count} x {p.gpu_memory_gb:g} GB" for p in pools)
        raise InvalidRequest(
            f"No worker pool can train '{spec.name}': it needs {spec.gpu_count} GPU(s) with {spec.gpu_memory_gb:g} GB "
            f"each, and the pools have {offered}. Add a pool (TAILOR_WORKER_POOLS) or choose another model.",
            param="model",
        )
    return min(fits, key=lambda p: (p.gpu_count, p.gpu_memory_gb)).queue


class WorkQueue:
    """The API's and workers' handle on the queues: connects on first use, so the API starts
    (and serves files, lists, retrieves) while Redis is briefly away. `queue_name` is the
    worker's own queue, or the API's default one; a job goes to the queue its row names.
    The API connects with no retries (`connect_retries=0`): a request must not wait a second
    per retry on a Redis that is away, since the reconciler enqueues what it missed."""

    def __init__(self, redis_url: str, queue_name: str, pools: list[WorkerPool] | None = None, connect_retries: int = 2):
        self.redis_url = redis_url
        self.connect_retries = connect_retries
        self.queue_name = queue_name
        self.pools = list(pools or [])
        self._pool: ArqRedis | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> ArqRedis:
        async with self._lock, _unavailable_on_error():
            if self._pool is None:
                self._pool = await connect(self.redis_url, self.connect_retries)
            return self._pool

    def queue_for(self, spec: BaseModelSpec) -> str:
        return queue_for(spec, self.pools, self.queue_name)

    async def enqueue(self, job_id: str, queue_name: str | None = None, function: str = TRAIN_FUNCTION) -> bool:
        async with _unavailable_on_error():
            return await enqueue_training(await self.pool(), queue_name or self.queue_name, job_id, function)

    async def requeue_lost(self, job_id: str, queue_name: str | None = None, function: str = TRAIN_FUNCTION) -> None:
        async with _unavailable_on_error():
            await requeue_lost(await self.pool(), queue_name or self.queue_name, job_id, function)

    async def call(self, function: str, payload: dict[str, Any], queue_name: str, timeout: float) -> Any:
        """Run `function` on a worker of `queue_name` and wait for its answer (graders/run)."""
        async with _unavailable_on_error():
            # A request nobody picked up in time is dropped, not run after its caller left.
            job = await (await self.pool()).enqueue_job(function, payload, _queue_name=queue_name, _expires=timeout)
        if job is None:  # only a duplicate `_job_id` is refused, and none is given
            raise BackendUnavailable("The work queue refused the request. Try again shortly.")
        try:
            return await job.result(timeout=timeout, poll_delay=0.1)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise BackendUnavailable(
                f"No eval worker answered within {timeout:g} s (is `tailor eval-worker` running?). Try again shortly."
            ) from exc
        except (OSError, RedisError) as exc:
            raise BackendUnavailable(f"The work queue (Redis) is unavailable: {exc!r}. Try again shortly.") from exc

    async def signal(self, job_id: str, signal: Signal) -> None:
        async with _unavailable_on_error():
            await send_signal(await self.pool(), job_id, signal)

    async def read_signal(self, job_id: str) -> Signal | None:
        async with _unavailable_on_error():
            value = await (await self.pool()).get(signal_key(job_id))
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        return "cancel" if text == "cancel" else "pause" if text == "pause" else None

    async def clear_signal(self, job_id: str) -> None:
        async with _unavailable_on_error():
            await clear_signal(await self.pool(), job_id)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


@asynccontextmanager
async def _unavailable_on_error() -> AsyncIterator[None]:
    try:
        yield
    except (OSError, RedisError) as exc:
        raise BackendUnavailable(f"The work queue (Redis) is unavailable: {exc!r}. Try again shortly.") from exc
