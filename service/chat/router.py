"""Chat routes: POST /v1/chat/completions and POST /v1/completions, answered by vLLM."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import Principal, PrincipalDep
from service.chat import service
from service.chat.relay import UpstreamRelay
from service.chat.schemas import ChatCompletionCreate, CompletionCreate
from service.db import SessionDep
from service.model_registry import BaseModelsDep, BaseModelSpec

router = APIRouter(tags=["Chat"])

_RELAYED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "vLLM's answer, relayed: a completion object, or with `stream` a text/event-stream of chunks.",
        "content": {"application/json": {}, "text/event-stream": {}},
    }
}


async def _relay(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    base_models: dict[str, BaseModelSpec],
    gateway: service.InferenceGateway,
    model: str,
    path: str,
) -> UpstreamRelay:
    base_model = await service.base_model_of(session, principal, base_models, model, gateway.owners)
    # Give the database connection back now, not when a long stream ends.
    await session.close()
    body = await request.body()
    return UpstreamRelay(gateway, base_model, path, body, model, request.scope.get("state", {}).get("request_id"))


@router.post("/chat/completions", responses=_RELAYED)
async def create_chat_completion(
    body: ChatCompletionCreate,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    base_models: BaseModelsDep,
    gateway: service.GatewayDep,
) -> UpstreamRelay:
    return await _relay(request, session, principal, base_models, gateway, body.model, "/v1/chat/completions")


@router.post("/completions", responses=_RELAYED)
async def create_completion(
    body: CompletionCreate,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    base_models: BaseModelsDep,
    gateway: service.GatewayDep,
) -> UpstreamRelay:
    return await _relay(request, session, principal, base_models, gateway, body.model, "/v1/completions")
