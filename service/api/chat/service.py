"""Which vLLM servers answer a chat request: a base model's own, or for one of the
project's fine-tuned models, or one shared with it (anything else is the same 404 as a
missing model), its base's."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.api.auth import Principal
from service.api.ttl_cache import TtlCache
from service.core.errors import ModelNotFound
from service.core.registry import BaseModelSpec
from service.jobs.catalog import find_fine_tuned, find_usable


async def base_model_of(
    sessionmaker: async_sessionmaker[AsyncSession],
    principal: Principal,
    base_models: dict[str, BaseModelSpec],
    model: str,
    owners: TtlCache[tuple[str, str], str],
) -> str:
    """The base model whose vLLM servers answer `model`, if the caller may use it. The
    database is asked only when `owners` has not seen the model in the last few seconds
    (and re-asked in the background before the entry expires)."""
    if model in base_models:
        return model

    async def base_of_owned() -> str | None:
        async with sessionmaker() as session:
            row = await find_fine_tuned(session, principal.project_id, model)
        return row.base_model if row is not None else None

    key = (principal.project_id, model)
    if (base := owners.get(key, base_of_owned)) is not None:
        return base
    if (base := await base_of_owned()) is not None:
        owners.put(key, base)
        return base
    # Shared with this project by another one: looked up on every request (never cached),
    # so deleting the permission stops its use at once.
    async with sessionmaker() as session:
        shared = await find_usable(session, principal.project_id, model)
    if shared is None:
        raise ModelNotFound.named(model)
    return shared.base_model
