"""Models: the registry's base models plus each project's fine-tuned models and checkpoints.

Naming (DESIGN.md): `ft:{base}:{project}:{suffix}:{job}` for a job's final model and
`…:ckpt-step-{N}` for a checkpoint; every checkpoint is servable.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import Principal
from service.errors import ModelNotFound, PermissionDenied
from service.ids import now
from service.model_registry import BaseModelSpec
from service.storage import ObjectStore
from service.tables import FineTunedModel, FineTuningJob

JOB_ID_PREFIX = "ftjob-"


def fine_tuned_model_name(job: FineTuningJob, project_name: str) -> str:
    return f"ft:{job.model}:{project_name}:{job.suffix or ''}:{job.id.removeprefix(JOB_ID_PREFIX)}"


def checkpoint_model_name(final_name: str, step: int) -> str:
    return f"{final_name}:ckpt-step-{step}"


def register_model(session: AsyncSession, job: FineTuningJob, name: str, kind: str, storage_key: str) -> FineTunedModel:
    """Record a servable adapter (called by the trainer; the caller commits)."""
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


async def list_fine_tuned(session: AsyncSession, principal: Principal) -> list[FineTunedModel]:
    query = (
        select(FineTunedModel)
        .where(FineTunedModel.project_id == principal.project_id)
        .order_by(FineTunedModel.seq.asc())
    )
    return list((await session.execute(query)).scalars())


async def find_fine_tuned(session: AsyncSession, project_id: str, name: str) -> FineTunedModel | None:
    query = select(FineTunedModel).where(FineTunedModel.id == name, FineTunedModel.project_id == project_id)
    return (await session.execute(query)).scalar_one_or_none()


def not_found(name: str) -> ModelNotFound:
    return ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")


async def delete_fine_tuned(
    session: AsyncSession,
    store: ObjectStore,
    principal: Principal,
    base_models: dict[str, BaseModelSpec],
    name: str,
) -> None:
    if name in base_models:
        raise PermissionDenied(f"The model '{name}' is a base model; only fine-tuned models can be deleted.", param="model")
    row = await find_fine_tuned(session, principal.project_id, name)
    if row is None:
        raise not_found(name)
    key = row.storage_key
    await session.delete(row)
    await session.commit()
    # The row is gone, so nothing will resolve this adapter again; now drop its bytes.
    await asyncio.to_thread(store.delete_prefix, key)
    # vLLM may hold it already: unload it there (which also evicts its cached files). Imported
    # here because the chat service imports this module.
    from service.chat.service import forget_model

    await forget_model(row.base_model, name)
