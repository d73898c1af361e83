"""Checkpoint permissions: /v1/fine_tuning/checkpoints/{checkpoint}/permissions (list,
create, delete, as the spec shapes them). An admin key of the project that owns a fine-tuned
model or checkpoint shares it with other projects, which may then serve it (chat, evals);
deleting the permission stops that at once (the shared path is never cached)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from service.api.auth import require_admin
from service.api.deps import PrincipalDep, SessionDep
from service.api.errors import error_responses
from service.api.fields import RequestBody
from service.api.pagination import IdPage, paginate
from service.core.db import rows_changed
from service.core.errors import InvalidRequest, ModelNotFound, NotFound
from service.core.ids import new_id, now
from service.core.tables import CheckpointPermission, FineTunedModel, Project
from service.jobs.catalog import find_fine_tuned

router = APIRouter(prefix="/fine_tuning/checkpoints", tags=["Fine-tuning"], responses=error_responses(400, 401, 403, 404, 503))


class PermissionCreate(RequestBody):
    project_ids: list[str] = Field(min_length=1, max_length=100)


class PermissionObject(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    created_at: int
    project_id: str

    @classmethod
    def of(cls, row: CheckpointPermission) -> PermissionObject:
        return cls(id=row.id, created_at=row.created_at, project_id=row.project_id)


class PermissionList(IdPage[PermissionObject]):
    pass


class PermissionDeleted(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    deleted: bool = True


async def _owned(session: SessionDep, principal: PrincipalDep, checkpoint: str) -> FineTunedModel:
    require_admin(principal)
    row = await find_fine_tuned(session, principal.project_id, checkpoint)
    if row is None:
        raise ModelNotFound(
            f"The model '{checkpoint}' does not exist or you do not have access to it.", param="fine_tuned_model_checkpoint"
        )
    return row


@router.post("/{fine_tuned_model_checkpoint:path}/permissions", response_model=PermissionList)
async def create_permissions(
    fine_tuned_model_checkpoint: str, body: PermissionCreate, session: SessionDep, principal: PrincipalDep
) -> PermissionList:
    model = await _owned(session, principal, fine_tuned_model_checkpoint)
    for i, project_id in enumerate(body.project_ids):
        if project_id == principal.project_id:
            raise InvalidRequest("A project cannot be granted its own model", param=f"project_ids[{i}]")
        if (await session.execute(select(Project.id).where(Project.id == project_id))).scalar() is None:
            raise InvalidRequest(f"No such project: {project_id}", param=f"project_ids[{i}]")
    made = []
    for project_id in dict.fromkeys(body.project_ids):
        existing = (
            await session.execute(
                select(CheckpointPermission).where(
                    CheckpointPermission.model_id == model.id, CheckpointPermission.project_id == project_id
                )
            )
        ).scalar_one_or_none()
        if existing is None:
            existing = CheckpointPermission(id=new_id("cp_"), model_id=model.id, project_id=project_id, created_at=now())
            session.add(existing)
        made.append(existing)
    try:
        await session.commit()
    except IntegrityError as exc:  # the same grant made by a concurrent request: try again
        raise InvalidRequest("The permissions changed meanwhile; send the request again", param="project_ids") from exc
    return PermissionList.of([PermissionObject.of(p) for p in made], False)


@router.get("/{fine_tuned_model_checkpoint:path}/permissions", response_model=PermissionList)
async def list_permissions(
    fine_tuned_model_checkpoint: str,
    session: SessionDep,
    principal: PrincipalDep,
    project_id: str | None = None,
    after: str | None = None,
    limit: int = Query(10, ge=1, le=100),
    order: Literal["ascending", "descending"] = "descending",
) -> PermissionList:
    model = await _owned(session, principal, fine_tuned_model_checkpoint)
    query = select(CheckpointPermission).where(CheckpointPermission.model_id == model.id)
    if project_id is not None:
        query = query.where(CheckpointPermission.project_id == project_id)
    direction: Literal["asc", "desc"] = "asc" if order == "ascending" else "desc"
    rows, has_more = await paginate(
        session, query, CheckpointPermission, after=after, limit=limit, order=direction, what="permission"
    )
    return PermissionList.of([PermissionObject.of(r) for r in rows], has_more)


@router.delete("/{fine_tuned_model_checkpoint:path}/permissions/{permission_id}", response_model=PermissionDeleted)
async def delete_permission(
    fine_tuned_model_checkpoint: str, permission_id: str, session: SessionDep, principal: PrincipalDep
) -> PermissionDeleted:
    model = await _owned(session, principal, fine_tuned_model_checkpoint)
    result = await session.execute(
        delete(CheckpointPermission).where(CheckpointPermission.id == permission_id, CheckpointPermission.model_id == model.id)
    )
    await session.commit()
    if rows_changed(result) != 1:
        raise NotFound(f"No such permission: {permission_id}", param="permission_id")
    return PermissionDeleted(id=permission_id)
