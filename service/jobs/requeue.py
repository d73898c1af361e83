"""Healing the queue: Redis carries work but not truth, so what the rows say waits for a
worker is put back on the queue, and jobs whose worker vanished are requeued.

Safe to repeat: arq ignores a job id that is already queued, and workers skip jobs that
moved on.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.core.errors import ApiError
from service.core.tables import FineTuningJob
from service.jobs import lease
from service.jobs import lifecycle as lc
from service.jobs.queue import WorkQueue

log = logging.getLogger("tailor.queue")


async def requeue_unfinished_jobs(
    sessionmaker: async_sessionmaker[AsyncSession], queue: WorkQueue, *, every_queue: bool = False
) -> int:
    """Enqueue every job that waits for a worker and holds no lease, on its own queue; return
    how many were looked at. A worker looks after its queue only; the API (`every_queue`)
    after all of them. Run at API start and by workers now and then, it heals a job whose
    enqueue was lost (Redis away at create, resume racing the end of a pause)."""
    query = select(FineTuningJob.id, FineTuningJob.queue).where(
        FineTuningJob.status.in_([lc.VALIDATING, lc.QUEUED]), FineTuningJob.worker_id.is_(None)
    )
    if not every_queue:
        query = query.where(FineTuningJob.queue == queue.queue_name)
    async with sessionmaker() as session:
        waiting = list((await session.execute(query)).tuples())
    for job_id, queue_name in waiting:
        try:
            await queue.enqueue(job_id, queue_name)
        except ApiError:
            log.warning("queue unavailable; %d jobs wait to be enqueued", len(waiting))
            break
    return len(waiting)


async def requeue_lost_jobs(sessionmaker: async_sessionmaker[AsyncSession], queue: WorkQueue) -> list[str]:
    """Requeue the jobs of `queue` whose worker stopped renewing its lease (killed, lost its
    host); return their ids."""
    async with sessionmaker() as session:
        reaped = await lease.reap_expired(session, queue.queue_name)
    for job_id in reaped:
        log.warning("job %s: lease expired; requeued", job_id)
        await queue.requeue_lost(job_id)
    return reaped


async def reconcile_forever(sessionmaker: async_sessionmaker[AsyncSession], queue: WorkQueue, interval: float) -> None:
    """The API's reconciler: every `interval` seconds, enqueue what the rows say waits (all
    queues), so a job created or resumed while Redis was away is queued within seconds of
    its return. Safe with several API replicas: enqueueing is idempotent."""
    while True:
        try:
            await requeue_unfinished_jobs(sessionmaker, queue, every_queue=True)
        except (ApiError, OSError, SQLAlchemyError) as exc:
            log.warning("reconciler: %r", exc)
        await asyncio.sleep(interval)
