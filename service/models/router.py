"""Models routes: GET /v1/models, GET/DELETE /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter

from service.auth import PrincipalDep
from service.db import SessionDep
from service.model_registry import BaseModelsDep
from service.models import service
from service.models.schemas import ModelDeleted, ModelList, ModelObject
from service.storage import StoreDep

router = APIRouter(tags=["Models"])


@router.get("/models", response_model=ModelList)
async def list_models(session: SessionDep, principal: PrincipalDep, base_models: BaseModelsDep) -> ModelList:
    data = [ModelObject.of_base(spec) for spec in base_models.values()]
    data += [ModelObject.of_fine_tuned(row) for row in await service.list_fine_tuned(session, principal)]
    return ModelList(data=data)


# `{model:path}`: fine-tuned names contain ':' and base names may contain '/'.
@router.get("/models/{model:path}", response_model=ModelObject)
async def retrieve_model(model: str, session: SessionDep, principal: PrincipalDep, base_models: BaseModelsDep) -> ModelObject:
    if model in base_models:
        return ModelObject.of_base(base_models[model])
    row = await service.find_fine_tuned(session, principal.project_id, model)
    if row is None:
        raise service.not_found(model)
    return ModelObject.of_fine_tuned(row)


@router.delete("/models/{model:path}", response_model=ModelDeleted)
async def delete_model(
    model: str, session: SessionDep, principal: PrincipalDep, store: StoreDep, base_models: BaseModelsDep
) -> ModelDeleted:
    await service.delete_fine_tuned(session, store, principal, base_models, model)
    return ModelDeleted(id=model)
