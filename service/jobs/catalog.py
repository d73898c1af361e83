"""The catalog of servable adapters: each job's final model and its checkpoints, by name.

Written to be safe when a job runs twice (arq is at-least-once): rows are keyed by name, and
recording one that exists changes nothing. The caller commits.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.ids import new_id, now
from service.core.naming import checkpoint_model_name, fine_tuned_model_name
from service.core.tables import CheckpointPermission, FineTunedModel, FineTuningCheckpoint, FineTuningJob, Project
from service.jobs import lifecycle as lc

ModelKind = Literal["final", "checkpoint"]


def register_model(session: AsyncSession, job: FineTuningJob, name: str, kind: ModelKind, storage_key: str) -> FineTunedModel:
    """Record a servable adapter."""
    row = FineTunedModel(
        id=name,
        project_id=job.project_id,
        job_id=job.id,
        base_model=job.model,
        kind=kind,
        storage_key=storage_key,
        created_at=now(),
    )
    session.add(row)
    return row


async def final_model_name(session: AsyncSession, job: FineTuningJob) -> str:
    project = (await session.execute(select(Project.name).where(Project.id == job.project_id))).scalar_one()
    return fine_tuned_model_name(job, project)


async def record_checkpoint(
    session: AsyncSession, job: FineTuningJob, step: int, metrics: dict[str, Any], storage_key: str
) -> None:
    """The job's checkpoint at `step`, stored at `storage_key`, as a checkpoint and a model."""
    name = checkpoint_model_name(await final_model_name(session, job), step)
    known = select(FineTuningCheckpoint.id).where(FineTuningCheckpoint.fine_tuned_model_checkpoint == name)
    if (await session.execute(known)).scalar_one_or_none() is not None:
        return
    session.add(
        FineTuningCheckpoint(
            id=new_id("ftckpt-"),
            job_id=job.id,
            created_at=now(),
            fine_tuned_model_checkpoint=name,
            step_number=step,
            metrics=metrics,
            storage_key=storage_key,
        )
    )
    register_model(session, job, name, "checkpoint", storage_key)
    lc.add_event(session, job.id, f"Checkpoint created at step {step}")


async def record_final_model(session: AsyncSession, job: FineTuningJob, storage_key: str) -> str:
    """The job's final adapter, stored at `storage_key`, as a model; returns its name."""
    name = await final_model_name(session, job)
    known = select(FineTunedModel.id).where(FineTunedModel.id == name)
    if (await session.execute(known)).scalar_one_or_none() is None:
        register_model(session, job, name, "final", storage_key)
    return name


async def list_fine_tuned(session: AsyncSession, project_id: str) -> list[FineTunedModel]:
    query = select(FineTunedModel).where(FineTunedModel.project_id == project_id).order_by(FineTunedModel.seq.asc())
    return list((await session.execute(query)).scalars())


async def find_fine_tuned(session: AsyncSession, project_id: str, name: str) -> FineTunedModel | None:
    query = select(FineTunedModel).where(FineTunedModel.id == name, FineTunedModel.project_id == project_id)
    return (await session.execute(query)).scalar_one_or_none()


async def find_usable(session: AsyncSession, project_id: str, name: str) -> FineTunedModel | None:
    """A fine-tuned model the project may serve: its own, or one another project shared with
    it (a checkpoint permission). Never cached by callers for shared ones: revoking a
    permission stops its use at once."""
    own = await find_fine_tuned(session, project_id, name)
    if own is not None:
        return own
    shared = (
        select(FineTunedModel)
        .join(CheckpointPermission, CheckpointPermission.model_id == FineTunedModel.id)
        .where(FineTunedModel.id == name, CheckpointPermission.project_id == project_id)
    )
    return (await session.execute(shared)).scalar_one_or_none()


async def base_of(session: AsyncSession, project_id: str, name: str, base_models: Collection[str]) -> str | None:
    """The base model whose servers answer `name` for this project (a base model, or a
    fine-tuned model it may use); None when it may use no such model."""
    if name in base_models:
        return name
    row = await find_usable(session, project_id, name)
    return row.base_model if row is not None else None
