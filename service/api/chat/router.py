"""Chat routes: POST /v1/chat/completions and POST /v1/completions, answered by vLLM."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.auth import Principal
from service.api.chat import service
from service.api.chat.fast_path import RelayRoute
from service.api.chat.relay import UpstreamRelay
from service.api.chat.schemas import ChatCompletionCreate, CompletionCreate
from service.api.deps import PrincipalDep
from service.api.errors import error_responses
from service.api.gateway import InferenceGateway

_RELAYED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "vLLM's answer, relayed: a completion object, or with `stream` a text/event-stream of chunks.",
        "content": {"application/json": {}, "text/event-stream": {}},
    }
}


router = APIRouter(tags=["Chat"], route_class=RelayRoute, responses=error_responses(400, 401, 404, 502, 503, 504))


async def _relay(request: Request, principal: Principal, model: str, path: str) -> UpstreamRelay:
    state = request.app.state
    gateway: InferenceGateway = state.inference
    base_model = await service.base_model_of(state.sessionmaker, principal, state.base_models, model, gateway.owners)
    request_id = request.scope.get("state", {}).get("request_id")
    return UpstreamRelay(gateway, base_model, path, await request.body(), model, request_id)


@router.post("/chat/completions", responses=_RELAYED)
async def create_chat_completion(body: ChatCompletionCreate, request: Request, principal: PrincipalDep) -> UpstreamRelay:
    return await _relay(request, principal, body.model, "/v1/chat/completions")


@router.post("/completions", responses=_RELAYED)
async def create_completion(body: CompletionCreate, request: Request, principal: PrincipalDep) -> UpstreamRelay:
    return await _relay(request, principal, body.model, "/v1/completions")
