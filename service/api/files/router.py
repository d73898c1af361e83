"""Files API routes: POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content."""

from __future__ import annotations

import asyncio
import itertools
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api import idempotency
from service.api.deps import OwnedFileDep, PrincipalDep, SessionDep, SettingsDep, StoreDep
from service.api.errors import error_responses
from service.api.files import service
from service.api.files.multipart import BINARY, multipart_openapi, receive_file
from service.api.files.schemas import PURPOSES, FileDeleted, FileList, FileObject
from service.api.idempotency import IdempotencyKeyHeader
from service.core.errors import NotFound
from service.core.storage import ObjectNotFound

router = APIRouter(tags=["Files"], responses=error_responses(400, 401, 404, 503))

CREATE_FILE_BODY = multipart_openapi(
    ["file", "purpose"],
    {
        "file": BINARY,
        "purpose": {"type": "string", "enum": list(PURPOSES)},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
    },
)


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name (headers are Latin-1)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.post("/files", response_model=FileObject, openapi_extra=CREATE_FILE_BODY, responses=error_responses(409, 413))
async def create_file(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FileObject | JSONResponse:
    """Upload a file (multipart: `file`, `purpose`, optional `expires_after[anchor|seconds]`)."""
    async with receive_file(request, settings.max_upload_bytes) as received:

        async def create() -> FileObject:
            row = await service.create_file(
                session,
                store,
                principal,
                path=received.path,
                filename=received.filename,
                purpose=received.purpose,
                expires_after_seconds=received.expires_after_seconds,
            )
            return FileObject.of(row)

        # The file's name, purpose, size and expiry say whether a retry is the same request.
        same = (received.filename, received.purpose, received.path.stat().st_size, received.expires_after_seconds)
        return await idempotency.once(request, session, principal, idempotency_key, create, *same)


@router.get("/files", response_model=FileList)
async def list_files(
    session: SessionDep,
    principal: PrincipalDep,
    purpose: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> FileList:
    rows, has_more = await service.list_files(session, principal, purpose=purpose, limit=limit, order=order, after=after)
    return FileList.of([FileObject.of(r) for r in rows], has_more)


@router.get("/files/{file_id}", response_model=FileObject)
async def retrieve_file(file: OwnedFileDep) -> FileObject:
    return FileObject.of(file)


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(file: OwnedFileDep, session: SessionDep, store: StoreDep) -> FileDeleted:
    await service.delete_file(session, store, file)
    return FileDeleted(id=file.id)


@router.get("/files/{file_id}/content", response_class=StreamingResponse)
async def file_content(file: OwnedFileDep, store: StoreDep) -> StreamingResponse:
    """The file's bytes, streamed from the object store."""
    chunks = store.iter_chunks(file.storage_key)
    # Read the first chunk before answering, so a missing object is a 404, not a 200 cut short.
    try:
        first = await asyncio.to_thread(next, chunks, b"")
    except ObjectNotFound:
        raise NotFound(f"No such File object: {file.id} (its bytes are gone from the store)", param="id") from None
    return StreamingResponse(
        itertools.chain([first], chunks),
        media_type="application/octet-stream",
        headers={
            "content-length": str(file.bytes),
            "content-disposition": content_disposition(file.filename),
        },
    )
