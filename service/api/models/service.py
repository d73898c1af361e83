"""Models: the registry's base models plus each project's fine-tuned models and checkpoints
(the job domain's catalog, service/jobs/catalog.py)."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession

from service.api.auth import Principal
from service.api.gateway import InferenceGateway
from service.core.errors import ModelNotFound, PermissionDenied
from service.core.registry import BaseModelSpec
from service.core.storage import ObjectStore
from service.jobs.catalog import find_fine_tuned


async def delete_fine_tuned(
    session: AsyncSession,
    store: ObjectStore,
    gateway: InferenceGateway,
    principal: Principal,
    base_models: dict[str, BaseModelSpec],
    name: str,
) -> None:
    if name in base_models:
        raise PermissionDenied(f"The model '{name}' is a base model; only fine-tuned models can be deleted.", param="model")
    row = await find_fine_tuned(session, principal.project_id, name)
    if row is None:
        raise ModelNotFound.named(name)
    key = row.storage_key
    await session.delete(row)
    await session.commit()
    # The row is gone, so nothing will resolve this adapter again; now drop its bytes.
    await asyncio.to_thread(store.delete_prefix, key)
    # vLLM may hold it already: unload it there (which also evicts its cached files).
    await gateway.unload(row.base_model, name)
