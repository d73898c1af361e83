"""Reaching behind the API, for what the trainer (not built yet) will do: open a session on the
test database and move jobs along with the service-layer functions the trainer calls.

Each helper runs its own event loop (`asyncio.run`) and disposes of its engine before it
returns, so sync tests can call them and no connection outlives the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.db import make_engine, make_sessionmaker
from service.core.ids import new_id, now
from service.core.naming import checkpoint_model_name, fine_tuned_model_name
from service.core.storage import ObjectStore, open_store
from service.core.tables import FineTuningCheckpoint, FineTuningJob
from service.jobs import lifecycle as lc
from service.jobs.catalog import register_model

T = TypeVar("T")

ADAPTER_BYTES = b"not really safetensors, but bytes the store must drop on delete\n"


async def _with_session(database_url: str, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    engine = make_engine(database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            return await fn(session)
    finally:
        await engine.dispose()


def run_db(database_url: str, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `fn(session)` on a fresh engine in a fresh event loop."""
    return asyncio.run(_with_session(database_url, fn))


def server_store(server: Any) -> ObjectStore:
    """The object store `tailor serve` uses, resolved from its environment the way Settings does."""
    env = server.env
    url = env.get("TAILOR_STORAGE_URL")
    if not url:
        url = (Path(env.get("TAILOR_DATA_DIR", ".tailor")) / "objects").resolve().as_uri()
    return open_store(url, s3_endpoint_url=env.get("TAILOR_S3_ENDPOINT_URL"), s3_region=env.get("TAILOR_S3_REGION"))


@contextmanager
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


async def _load_job(session: AsyncSession, job_id: str) -> FineTuningJob:
    return (await session.execute(select(FineTuningJob).where(FineTuningJob.id == job_id))).scalar_one()


def start_job(database_url: str, job_id: str) -> None:
    """What a worker does when it picks a job up: validating/queued → running."""

    async def go(session: AsyncSession) -> None:
        job = await _load_job(session, job_id)
        moved = await lc.transition(
            session, job, lc.RUNNING, allowed_from=frozenset({lc.VALIDATING, lc.QUEUED}), message="Fine-tuning job started"
        )
        assert moved, f"job {job_id} could not start from {job.status}"
        await session.commit()

    run_db(database_url, go)


@dataclass
class FinishedJob:
    job_id: str
    fine_tuned_model: str
    final_key: str
    # step → (checkpoint id, checkpoint model name, storage key), in the order written
    checkpoints: dict[int, tuple[str, str, str]] = field(default_factory=dict)


def add_checkpoints(
    database_url: str, job_id: str, project_name: str, steps: list[int], store: ObjectStore | None = None
) -> dict[int, tuple[str, str, str]]:
    """Write checkpoint rows (and their servable models) for `steps`, one commit per step so
    each gets its own `seq`, as a trainer saving them over time would."""

    async def go(session: AsyncSession) -> dict[int, tuple[str, str, str]]:
        job = await _load_job(session, job_id)
        final = fine_tuned_model_name(job, project_name)
        out: dict[int, tuple[str, str, str]] = {}
        for step in steps:
            name = checkpoint_model_name(final, step)
            key = f"adapters/{job.project_id}/{job.id}/ckpt-step-{step}"
            if store is not None:
                await asyncio.to_thread(store.put_bytes, f"{key}/adapter_model.safetensors", ADAPTER_BYTES)
            ckpt_id = new_id("ftckpt-")
            session.add(
                FineTuningCheckpoint(
                    id=ckpt_id,
                    job_id=job.id,
                    created_at=now(),
                    fine_tuned_model_checkpoint=name,
                    step_number=step,
                    metrics={"step": float(step), "train_loss": 2.0 / step, "train_mean_token_accuracy": 0.5},
                    storage_key=key,
                )
            )
            register_model(session, job, name, "checkpoint", key)
            await session.commit()
            out[step] = (ckpt_id, name, key)
        return out

    return run_db(database_url, go)


def succeed_job(
    database_url: str, job_id: str, project_name: str, store: ObjectStore | None = None, steps: list[int] | None = None
) -> FinishedJob:
    """Run a job to `succeeded` the way the trainer will: running, checkpoints, final model."""
    start_job(database_url, job_id)
    checkpoints = add_checkpoints(database_url, job_id, project_name, steps or [], store)

    async def go(session: AsyncSession) -> FinishedJob:
        job = await _load_job(session, job_id)
        final = fine_tuned_model_name(job, project_name)
        key = f"adapters/{job.project_id}/{job.id}/final"
        if store is not None:
            await asyncio.to_thread(store.put_bytes, f"{key}/adapter_model.safetensors", ADAPTER_BYTES)
            await asyncio.to_thread(store.put_bytes, f"{key}/adapter_config.json", b'{"r": 16}')
        register_model(session, job, final, "final", key)
        moved = await lc.transition(
            session,
            job,
            lc.SUCCEEDED,
            allowed_from=frozenset({lc.RUNNING}),
            message="The job has successfully completed",
            fine_tuned_model=final,
            trained_tokens=1234,
        )
        assert moved, f"job {job_id} could not succeed from {job.status}"
        await session.commit()
        return FinishedJob(job_id=job_id, fine_tuned_model=final, final_key=key, checkpoints=checkpoints)

    return run_db(database_url, go)


def job_status(database_url: str, job_id: str) -> str:
    async def go(session: AsyncSession) -> str:
        return (await _load_job(session, job_id)).status

    return run_db(database_url, go)
