"""Models routes: GET /v1/models, GET/DELETE /v1/models/{model}, GET /v1/models/{model}/weights."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from service.api.deps import BaseModelsDep, GatewayDep, PrincipalDep, SessionDep, StoreDep
from service.api.errors import error_responses
from service.api.models import service, weights
from service.api.models.schemas import ModelDeleted, ModelList, ModelObject
from service.core.errors import ModelNotFound
from service.jobs.catalog import find_fine_tuned, list_fine_tuned

router = APIRouter(tags=["Models"], responses=error_responses(400, 401, 404, 503))


@router.get("/models", response_model=ModelList)
async def list_models(session: SessionDep, principal: PrincipalDep, base_models: BaseModelsDep) -> ModelList:
    data = [ModelObject.of_base(spec) for spec in base_models.values()]
    data += [ModelObject.of_fine_tuned(row) for row in await list_fine_tuned(session, principal.project_id)]
    return ModelList(data=data)


# Before `/models/{model:path}`, which would take `…/weights` for a model name.
@router.get(
    "/models/{model:path}/weights",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "The adapter as a .tar.gz peft directory"}},
)
async def download_weights(model: str, session: SessionDep, principal: PrincipalDep, store: StoreDep) -> StreamingResponse:
    """Tailor's extension: a fine-tuned model's or checkpoint's adapter, as a standard peft directory."""
    filename, chunks = await weights.archive(session, store, principal.project_id, model)
    return StreamingResponse(
        chunks, media_type="application/gzip", headers={"content-disposition": f'attachment; filename="{filename}"'}
    )


# `{model:path}`: fine-tuned names contain ':' and base names may contain '/'.
@router.get("/models/{model:path}", response_model=ModelObject)
async def retrieve_model(model: str, session: SessionDep, principal: PrincipalDep, base_models: BaseModelsDep) -> ModelObject:
    if model in base_models:
        return ModelObject.of_base(base_models[model])
    row = await find_fine_tuned(session, principal.project_id, model)
    if row is None:
        raise ModelNotFound.named(model)
    return ModelObject.of_fine_tuned(row)


@router.delete("/models/{model:path}", response_model=ModelDeleted, responses=error_responses(403))
async def delete_model(
    model: str, session: SessionDep, principal: PrincipalDep, store: StoreDep, gateway: GatewayDep, base_models: BaseModelsDep
) -> ModelDeleted:
    await service.delete_fine_tuned(session, store, gateway, principal, base_models, model)
    return ModelDeleted(id=model)
