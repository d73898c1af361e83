"""Fine-tuning routes: /v1/fine_tuning/jobs and its cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from service.api import idempotency
from service.api.deps import BaseModelsDep, OwnedJobDep, PrincipalDep, QueueDep, SessionDep, SettingsDep
from service.api.errors import error_responses
from service.api.fine_tuning import service
from service.api.fine_tuning.schemas import (
    FineTuningCheckpointList,
    FineTuningCheckpointObject,
    FineTuningEventList,
    FineTuningEventObject,
    FineTuningJobCreate,
    FineTuningJobList,
    FineTuningJobObject,
)
from service.api.idempotency import IdempotencyKeyHeader
from service.jobs import lifecycle as lc
from service.jobs.control import control_job

router = APIRouter(prefix="/fine_tuning", tags=["Fine-tuning"], responses=error_responses(400, 401, 404, 503))


def _metadata_filter(request: Request) -> tuple[dict[str, str], bool]:
    # `metadata[k]=v` is a deepObject query parameter; FastAPI cannot declare it directly.
    pairs = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.multi_items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    return pairs, request.query_params.get("metadata") == "null"


@router.post("/jobs", response_model=FineTuningJobObject, responses=error_responses(409, 503))
async def create_job(
    request: Request,
    body: FineTuningJobCreate,
    session: SessionDep,
    principal: PrincipalDep,
    queue: QueueDep,
    base_models: BaseModelsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FineTuningJobObject | JSONResponse:
    async def create() -> FineTuningJobObject:
        return FineTuningJobObject.of(await service.create_job(session, queue, principal, body, base_models, settings))

    return await idempotency.once(request, session, principal, idempotency_key, create, await request.body())


@router.get("/jobs", response_model=FineTuningJobList)
async def list_jobs(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> FineTuningJobList:
    metadata, metadata_is_null = _metadata_filter(request)
    rows, has_more = await service.list_jobs(
        session, principal, after=after, limit=limit, metadata=metadata, metadata_is_null=metadata_is_null
    )
    return FineTuningJobList.of([FineTuningJobObject.of(r) for r in rows], has_more)


@router.get("/jobs/{fine_tuning_job_id}", response_model=FineTuningJobObject)
async def retrieve_job(job: OwnedJobDep) -> FineTuningJobObject:
    return FineTuningJobObject.of(job)


@router.post("/jobs/{fine_tuning_job_id}/cancel", response_model=FineTuningJobObject)
async def cancel_job(job: OwnedJobDep, session: SessionDep, queue: QueueDep) -> FineTuningJobObject:
    return FineTuningJobObject.of(await control_job(session, queue, job, lc.CANCEL))


@router.post("/jobs/{fine_tuning_job_id}/pause", response_model=FineTuningJobObject)
async def pause_job(job: OwnedJobDep, session: SessionDep, queue: QueueDep) -> FineTuningJobObject:
    return FineTuningJobObject.of(await control_job(session, queue, job, lc.PAUSE))


@router.post("/jobs/{fine_tuning_job_id}/resume", response_model=FineTuningJobObject)
async def resume_job(job: OwnedJobDep, session: SessionDep, queue: QueueDep) -> FineTuningJobObject:
    return FineTuningJobObject.of(await control_job(session, queue, job, lc.RESUME))


@router.get("/jobs/{fine_tuning_job_id}/events", response_model=FineTuningEventList)
async def list_events(
    job: OwnedJobDep, session: SessionDep, after: str | None = None, limit: int = Query(20, ge=1, le=1000)
) -> FineTuningEventList:
    rows, has_more = await service.list_events(session, job, after=after, limit=limit)
    return FineTuningEventList.of([FineTuningEventObject.of(r) for r in rows], has_more)


@router.get("/jobs/{fine_tuning_job_id}/checkpoints", response_model=FineTuningCheckpointList)
async def list_checkpoints(
    job: OwnedJobDep, session: SessionDep, after: str | None = None, limit: int = Query(10, ge=1, le=100)
) -> FineTuningCheckpointList:
    rows, has_more = await service.list_checkpoints(session, job, after=after, limit=limit)
    return FineTuningCheckpointList.of([FineTuningCheckpointObject.of(r) for r in rows], has_more)
