"""Chat routes: POST /v1/chat/completions and POST /v1/completions, answered by vLLM."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import Principal, PrincipalDep, authenticate_lazily
from service.chat import service
from service.chat.relay import UpstreamRelay
from service.chat.schemas import ChatCompletionCreate, CompletionCreate
from service.errors import ApiError, error_response, validation_error_response

_RELAYED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "vLLM's answer, relayed: a completion object, or with `stream` a text/event-stream of chunks.",
        "content": {"application/json": {}, "text/event-stream": {}},
    }
}


class RelayRoute(APIRoute):
    """A chat route. FastAPI documents it from the endpoint's signature like any other
    route, but requests reach the endpoint through `get_route_handler` below instead of
    FastAPI's dependency solving.

    For a short answer that machinery (dependencies solved per request, a database session
    opened and closed though no query runs, the body decoded then validated) cost more CPU
    than the rest of the hop, and on a CPU host every millisecond of it is taken from vLLM.
    Here the principal comes from the verified-key cache (the database is asked only on a
    miss, as `PrincipalDep` would), and the body is validated in one pydantic call.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        parameters = set(inspect.signature(endpoint).parameters)
        if parameters != {"body", "request", "principal"}:
            raise TypeError(f"a RelayRoute endpoint takes exactly body, request and principal, not {sorted(parameters)}")
        body_model: type[BaseModel] = get_type_hints(endpoint)["body"]

        async def handle(request: Request) -> Response:
            principal = await authenticate_lazily(request)
            try:
                body = body_model.model_validate_json(await request.body())
            except ValidationError as exc:
                # Located as FastAPI locates body errors, so the usual handler words them.
                raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
            return await endpoint(body=body, request=request, principal=principal)

        return handle


class ChatShortcut:
    """Innermost middleware: a POST to a chat path goes straight to its RelayRoute's handler.

    Everything inside it (Starlette's exception layer, FastAPI's exit stacks, matching the
    path against every route, the per-request wrappers of `request_response`) is about a
    sixth of what a relayed short answer costs the API, and the chat paths need none of it:
    Tailor's own middlewares (request id, log context, metrics) are outside this one, and
    the two errors a handler raises are answered here as the app's handlers answer them.
    Other requests, and other methods on these paths (405), go through FastAPI as usual.
    """

    def __init__(self, app: ASGIApp, routes: dict[str, RelayRoute]):
        self.app = app
        self.routes = {path: (route, route.get_route_handler()) for path, route in routes.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        route, handle = found
        scope["route"] = route  # the metrics label it, as FastAPI would
        request = Request(scope, receive, send)
        try:
            response = await handle(request)
        except ApiError as exc:
            response = error_response(exc)
        except RequestValidationError as exc:
            response = validation_error_response(exc)
        await response(scope, receive, send)


router = APIRouter(tags=["Chat"], route_class=RelayRoute)


async def _relay(request: Request, principal: Principal, model: str, path: str) -> UpstreamRelay:
    state = request.app.state
    gateway: service.InferenceGateway = state.inference
    base_model = await service.base_model_of(state.sessionmaker, principal, state.base_models, model, gateway.owners)
    request_id = request.scope.get("state", {}).get("request_id")
    return UpstreamRelay(gateway, base_model, path, await request.body(), model, request_id)


@router.post("/chat/completions", responses=_RELAYED)
async def create_chat_completion(body: ChatCompletionCreate, request: Request, principal: PrincipalDep) -> UpstreamRelay:
    return await _relay(request, principal, body.model, "/v1/chat/completions")


@router.post("/completions", responses=_RELAYED)
async def create_completion(body: CompletionCreate, request: Request, principal: PrincipalDep) -> UpstreamRelay:
    return await _relay(request, principal, body.model, "/v1/completions")
