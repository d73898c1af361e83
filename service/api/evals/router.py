"""Evals routes: /v1/evals, its runs (cancel at the spec's path and at `/cancel`, where the
3.x SDK sends it) and their output items. Another project's eval answers like a missing one."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request

from service.api.deps import (
    BaseModelsDep,
    OwnedEvalDep,
    OwnedRunDep,
    PrincipalDep,
    QueueDep,
    SessionDep,
    SettingsDep,
)
from service.api.errors import error_responses
from service.api.evals import service
from service.api.evals.schemas import (
    EvalCreate,
    EvalDeleted,
    EvalList,
    EvalObject,
    EvalUpdate,
    OutputItemList,
    OutputItemObject,
    RunCreate,
    RunDeleted,
    RunList,
    RunObject,
)
from service.api.lookups import owned_output_item

router = APIRouter(prefix="/evals", tags=["Evals"], responses=error_responses(400, 401, 404, 503))

Order = Literal["asc", "desc"]
RunStatus = Literal["queued", "in_progress", "completed", "canceled", "failed"]


@router.post("", response_model=EvalObject, status_code=201)
async def create_eval(
    body: EvalCreate, session: SessionDep, principal: PrincipalDep, base_models: BaseModelsDep, settings: SettingsDep
) -> EvalObject:
    return EvalObject.of(await service.create_eval(session, principal, body, base_models, settings))


@router.get("", response_model=EvalList)
async def list_evals(
    session: SessionDep,
    principal: PrincipalDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Order = "asc",
    order_by: Literal["created_at", "updated_at"] = "created_at",
) -> EvalList:
    rows, has_more = await service.list_evals(session, principal, after=after, limit=limit, order=order, order_by=order_by)
    return EvalList.of([EvalObject.of(r) for r in rows], has_more)


@router.get("/{eval_id}", response_model=EvalObject)
async def retrieve_eval(ev: OwnedEvalDep) -> EvalObject:
    return EvalObject.of(ev)


@router.post("/{eval_id}", response_model=EvalObject)
async def update_eval(ev: OwnedEvalDep, body: EvalUpdate, session: SessionDep) -> EvalObject:
    return EvalObject.of(await service.update_eval(session, ev, body))


@router.delete("/{eval_id}", response_model=EvalDeleted)
async def delete_eval(ev: OwnedEvalDep, session: SessionDep) -> EvalDeleted:
    await service.delete_eval(session, ev)
    return EvalDeleted(eval_id=ev.id)


@router.post("/{eval_id}/runs", response_model=RunObject, status_code=201, responses=error_responses(503))
async def create_run(
    request: Request,
    ev: OwnedEvalDep,
    body: RunCreate,
    session: SessionDep,
    principal: PrincipalDep,
    queue: QueueDep,
    base_models: BaseModelsDep,
    settings: SettingsDep,
) -> RunObject:
    row = await service.create_run(session, queue, principal, ev, body, base_models, settings, str(request.base_url))
    return RunObject.of(row)


@router.get("/{eval_id}/runs", response_model=RunList)
async def list_runs(
    ev: OwnedEvalDep,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Order = "asc",
    status: RunStatus | None = None,
) -> RunList:
    rows, has_more = await service.list_runs(session, ev, after=after, limit=limit, order=order, status=status)
    return RunList.of([RunObject.of(r) for r in rows], has_more)


@router.get("/{eval_id}/runs/{run_id}", response_model=RunObject)
async def retrieve_run(run: OwnedRunDep) -> RunObject:
    return RunObject.of(run)


@router.post("/{eval_id}/runs/{run_id}", response_model=RunObject, responses=error_responses(409))
@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=RunObject, responses=error_responses(409))
async def cancel_run(run: OwnedRunDep, session: SessionDep) -> RunObject:
    return RunObject.of(await service.cancel_run(session, run))


@router.delete("/{eval_id}/runs/{run_id}", response_model=RunDeleted)
async def delete_run(run: OwnedRunDep, session: SessionDep) -> RunDeleted:
    await service.delete_run(session, run)
    return RunDeleted(run_id=run.id)


@router.get("/{eval_id}/runs/{run_id}/output_items", response_model=OutputItemList)
async def list_output_items(
    run: OwnedRunDep,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Order = "asc",
    status: Literal["fail", "pass"] | None = None,
) -> OutputItemList:
    rows, has_more = await service.list_output_items(session, run, after=after, limit=limit, order=order, status=status)
    return OutputItemList.of([OutputItemObject.of(r, run.eval_id) for r in rows], has_more)


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=OutputItemObject)
async def retrieve_output_item(run: OwnedRunDep, output_item_id: str, session: SessionDep) -> OutputItemObject:
    return OutputItemObject.of(await owned_output_item(session, run, output_item_id), run.eval_id)
