"""`Idempotency-Key` on the creating routes (POST /v1/files, /v1/uploads, /v1/fine_tuning/jobs):
a client that retries a request it never saw answered gets the first answer again instead
of a second object.

The key is claimed in SQL before the work starts (a row per project and key), so two
concurrent requests with one key cannot both create: the second answers 409 until the
first is done. The answer is kept once the work succeeds, 24 hours (the janitor removes
older ones); a request that fails releases its key, so a retry runs again. A key reused
with a different request answers 400, as Stripe's and OpenAI's do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.api.auth import Principal
from service.core.errors import Conflict, InvalidRequest
from service.core.ids import now
from service.core.tables import IdempotencyKey

HEADER = "idempotency-key"
KEEP_SECONDS = 24 * 3600

# The header as the creating routes declare it: FastAPI checks its length (a 400 naming it)
# and the OpenAPI document shows it.
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Send the same key again to get the first answer instead of a second object (kept 24 hours).",
    ),
]

Answer = TypeVar("Answer", bound=BaseModel)


def fingerprint(request: Request, *parts: object) -> str:
    """What makes two requests the same: method, path and the parts given (the body)."""
    digest = hashlib.sha256(f"{request.method} {request.url.path}".encode())
    for part in parts:
        digest.update(b"\0" + (part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode()))
    return digest.hexdigest()


async def once(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    key: str | None,
    create: Callable[[], Awaitable[Answer]],
    *same_request: object,
) -> Answer | JSONResponse:
    """Run `create` unless this project already ran it under Idempotency-Key `key` (the
    route's `IdempotencyKeyHeader`); `same_request`: what, with the method and path, makes
    a retry the same request (the JSON body; a file's name, purpose and size)."""
    if key is None:
        return await create()
    if (answered := await _claim(session, principal.project_id, key, fingerprint(request, *same_request))) is not None:
        return answered
    try:
        answer = await create()
    except BaseException:
        await session.rollback()
        held = IdempotencyKey.project_id == principal.project_id, IdempotencyKey.key == key
        await session.execute(delete(IdempotencyKey).where(*held))
        await session.commit()
        raise
    row = await session.get(IdempotencyKey, (principal.project_id, key))
    if row is not None:
        row.status_code, row.response = 200, answer.model_dump_json()
        await session.commit()
    return answer


async def _claim(session: AsyncSession, project_id: str, key: str, request_fingerprint: str) -> JSONResponse | None:
    """None once this request holds the key; else the answer to give instead."""
    for _ in range(2):
        session.add(IdempotencyKey(project_id=project_id, key=key, fingerprint=request_fingerprint, created_at=now()))
        try:
            await session.commit()
            return None
        except IntegrityError:
            await session.rollback()
        held = await session.get(IdempotencyKey, (project_id, key), populate_existing=True)
        if held is None:
            continue  # released meanwhile: claim it
        if held.created_at < now() - KEEP_SECONDS:
            await session.delete(held)  # expired, not yet swept
            await session.commit()
            continue
        if held.fingerprint != request_fingerprint:
            raise InvalidRequest(
                "This Idempotency-Key was already used with a different request. Use a new key for a new request.",
                param=HEADER,
                code="idempotency_key_reused",
            )
        if held.status_code is None or held.response is None:
            raise InProgress("A request with this Idempotency-Key is still being processed. Retry shortly.", param=HEADER)
        return JSONResponse(json.loads(held.response), status_code=held.status_code, headers={"idempotent-replayed": "true"})
    raise InProgress("This Idempotency-Key is being claimed by another request. Retry shortly.", param=HEADER)


class InProgress(Conflict):
    retry_after = 1
