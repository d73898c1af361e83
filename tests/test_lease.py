"""Leases on job rows: one worker at a time, and expired leases are reaped once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import fresh_database_url
from sqlalchemy import update

from service.core.db import make_engine, make_sessionmaker, run_migrations
from service.core.ids import new_id, now
from service.core.tables import FineTuningJob, Project
from service.jobs import lease

QUEUE = "tailor:lease-test"


async def _scenario(url: str) -> None:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as s:
            project = Project(id=new_id("proj_"), name=f"p{new_id('')[:8]}", created_at=now())
            s.add(project)
            await s.flush()
            job = FineTuningJob(
                id=new_id("ftjob-"),
                project_id=project.id,
                model="m",
                status="running",
                training_file="file-x",
                method={"type": "supervised", "supervised": {"hyperparameters": {}}},
                extra_hyperparameters={},
                seed=1,
                result_files=[],
                created_at=now(),
                queue=QUEUE,
            )
            s.add(job)
            await s.commit()
            job_id = job.id

        async with sessions() as s:
            assert await lease.acquire(s, job_id, "worker-a", 60)
            assert not await lease.acquire(s, job_id, "worker-b", 60), "a live lease is exclusive"
            assert await lease.acquire(s, job_id, "worker-a", 60), "the holder may take it again"
            assert await lease.renew(s, job_id, "worker-a", 60)
            assert not await lease.renew(s, job_id, "worker-b", 60)
            assert await lease.reap_expired(s, QUEUE) == []

            # worker-a goes silent: its lease runs out.
            await s.execute(update(FineTuningJob).where(FineTuningJob.id == job_id).values(lease_expires_at=now() - 1))
            await s.commit()
            assert await lease.reap_expired(s, "another:queue") == [], "workers reap only their own queue"
            assert await lease.reap_expired(s, QUEUE) == [job_id]
            assert await lease.reap_expired(s, QUEUE) == [], "a lease is reaped once"
            assert not await lease.renew(s, job_id, "worker-a", 60), "the silent worker lost it"
            assert await lease.acquire(s, job_id, "worker-b", 60)

            # A finished job is never leased again.
            await s.execute(update(FineTuningJob).where(FineTuningJob.id == job_id).values(status="succeeded"))
            await s.commit()
            await lease.release(s, job_id, "worker-b")
            assert not await lease.acquire(s, job_id, "worker-c", 60)
    finally:
        await engine.dispose()


def test_lease_is_exclusive_expires_and_is_reaped_once(tmp_path: Path) -> None:
    with fresh_database_url(tmp_path) as url:
        run_migrations(url)
        asyncio.run(_scenario(url))
