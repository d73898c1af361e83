"""Every FastAPI dependency alias of the API, in one place.

Resources are built once at start-up and kept on `app.state` (service/api/app.py); these
hand them to routes. The `Owned…Dep` aliases load an object of the caller's project, and
answer another project's object exactly like a missing one (404).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.api import auth, lookups
from service.api.gateway import InferenceGateway
from service.core.registry import BaseModelSpec
from service.core.settings import Settings
from service.core.storage import ObjectStore
from service.core.tables import Eval, EvalRun, File, FineTuningJob, Upload
from service.jobs.queue import WorkQueue

# Every dependency here is async: FastAPI runs a plain `def` one in its thread pool, a
# thread hop per request.


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


async def _store(request: Request) -> ObjectStore:
    return request.app.state.store


async def _queue(request: Request) -> WorkQueue:
    return request.app.state.queue


async def _base_models(request: Request) -> dict[str, BaseModelSpec]:
    return request.app.state.base_models


async def _gateway(request: Request) -> InferenceGateway:
    return request.app.state.inference


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[AsyncSession, Depends(_session)]
StoreDep = Annotated[ObjectStore, Depends(_store)]
QueueDep = Annotated[WorkQueue, Depends(_queue)]
BaseModelsDep = Annotated[dict[str, BaseModelSpec], Depends(_base_models)]
GatewayDep = Annotated[InferenceGateway, Depends(_gateway)]


async def _principal(request: Request, session: SessionDep) -> auth.Principal:
    return await auth.authenticate(request, session)


PrincipalDep = Annotated[auth.Principal, Depends(_principal)]


async def _owned_file(file_id: str, session: SessionDep, principal: PrincipalDep) -> File:
    return await lookups.owned_file(session, principal.project_id, file_id)


async def _owned_upload(upload_id: str, session: SessionDep, principal: PrincipalDep) -> Upload:
    return await lookups.owned_upload(session, principal.project_id, upload_id)


async def _owned_job(fine_tuning_job_id: str, session: SessionDep, principal: PrincipalDep) -> FineTuningJob:
    return await lookups.owned_job(session, principal.project_id, fine_tuning_job_id)


OwnedFileDep = Annotated[File, Depends(_owned_file)]
OwnedUploadDep = Annotated[Upload, Depends(_owned_upload)]
OwnedJobDep = Annotated[FineTuningJob, Depends(_owned_job)]


async def _owned_eval(eval_id: str, session: SessionDep, principal: PrincipalDep) -> Eval:
    return await lookups.owned_eval(session, principal.project_id, eval_id)


OwnedEvalDep = Annotated[Eval, Depends(_owned_eval)]


async def _owned_run(run_id: str, ev: OwnedEvalDep, session: SessionDep) -> EvalRun:
    return await lookups.owned_run(session, ev, run_id)


OwnedRunDep = Annotated[EvalRun, Depends(_owned_run)]
