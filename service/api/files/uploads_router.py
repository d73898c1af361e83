"""Uploads API routes: POST /v1/uploads, …/parts, …/complete, …/cancel."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api import idempotency
from service.api.deps import OwnedUploadDep, PrincipalDep, SessionDep, SettingsDep, StoreDep
from service.api.errors import error_responses
from service.api.files import uploads
from service.api.files.multipart import BINARY, multipart_openapi, spool_form_file
from service.api.files.schemas import UploadComplete, UploadCreate, UploadObject, UploadPartObject
from service.api.files.uploads import effective_status
from service.api.idempotency import IdempotencyKeyHeader

router = APIRouter(tags=["Uploads"], responses=error_responses(400, 401, 404, 503))

ADD_PART_BODY = multipart_openapi(["data"], {"data": BINARY})


@router.post("/uploads", response_model=UploadObject, responses=error_responses(409))
async def create_upload(
    request: Request,
    body: UploadCreate,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> UploadObject | JSONResponse:
    async def create() -> UploadObject:
        row = await uploads.create_upload(session, principal, body, settings)
        return UploadObject.of(row, effective_status(row))

    return await idempotency.once(request, session, principal, idempotency_key, create, await request.body())


@router.post(
    "/uploads/{upload_id}/parts", response_model=UploadPartObject, openapi_extra=ADD_PART_BODY, responses=error_responses(413)
)
async def add_upload_part(
    request: Request, upload: OwnedUploadDep, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> UploadPartObject:
    """Add one part (multipart field `data`, at most 64 MB)."""
    uploads.require_pending(upload, "add a part to")
    async with spool_form_file(request, "data", settings.max_upload_part_bytes) as form:
        part = await uploads.add_part(session, store, upload, form.path)
    return UploadPartObject.of(part)


@router.post("/uploads/{upload_id}/complete", response_model=UploadObject)
async def complete_upload(
    body: UploadComplete, upload: OwnedUploadDep, session: SessionDep, principal: PrincipalDep, store: StoreDep
) -> UploadObject:
    file = await uploads.complete_upload(session, store, principal, upload, body.part_ids, body.md5)
    return UploadObject.of(upload, "completed", file)


@router.post("/uploads/{upload_id}/cancel", response_model=UploadObject)
async def cancel_upload(upload: OwnedUploadDep, session: SessionDep, store: StoreDep) -> UploadObject:
    await uploads.cancel_upload(session, store, upload)
    return UploadObject.of(upload, "cancelled")
