"""Leases on job rows: at most one worker runs a job, and a job whose worker vanished is
requeued (ARCHITECTURE.md: jobs are at-least-once; the lease makes running them safe).

A lease is (worker_id, lease_expires_at) on the job row. Every change is one guarded
UPDATE, so two workers racing for the same row cannot both win.
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.db import rows_changed
from service.core.ids import now
from service.core.tables import FineTuningJob
from service.jobs import lifecycle as lc


async def acquire(session: AsyncSession, job_id: str, worker_id: str, seconds: int) -> bool:
    t = now()
    result = await session.execute(
        update(FineTuningJob)
        .where(
            FineTuningJob.id == job_id,
            FineTuningJob.status.in_(lc.LEASABLE),
            or_(
                FineTuningJob.worker_id.is_(None),
                FineTuningJob.worker_id == worker_id,
                FineTuningJob.lease_expires_at < t,
            ),
        )
        .values(worker_id=worker_id, lease_expires_at=t + seconds)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return rows_changed(result) == 1


async def renew(session: AsyncSession, job_id: str, worker_id: str, seconds: int) -> bool:
    """Extend our lease; False means we lost it (expired and taken, or the job moved on)."""
    result = await session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.worker_id == worker_id)
        .values(lease_expires_at=now() + seconds)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return rows_changed(result) == 1


async def release(session: AsyncSession, job_id: str, worker_id: str) -> None:
    await session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.worker_id == worker_id)
        .values(worker_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    await session.commit()


async def reap_expired(session: AsyncSession, queue_name: str) -> list[str]:
    """Free the leases of `queue_name`'s jobs that ran out; return those jobs' ids, to be
    requeued on that queue."""
    t = now()
    expired = and_(
        FineTuningJob.queue == queue_name,
        FineTuningJob.status.in_(lc.LEASABLE),
        FineTuningJob.worker_id.is_not(None),
        FineTuningJob.lease_expires_at < t,
    )
    candidates = list((await session.execute(select(FineTuningJob.id, FineTuningJob.worker_id).where(expired))).all())
    reaped: list[str] = []
    for job_id, worker_id in candidates:
        result = await session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.worker_id == worker_id, expired)
            .values(worker_id=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        if rows_changed(result) == 1:
            lc.add_event(
                session,
                job_id,
                f"Worker {worker_id} stopped renewing its lease; the job was requeued",
                level="warn",
            )
            reaped.append(job_id)
    await session.commit()
    return reaped
