"""The chat routes' fast path: a relayed chat request skips FastAPI's per-request machinery.

Why: on a CPU host every millisecond the API spends is taken from vLLM, and for a short
answer that machinery cost more than the rest of the hop (bench/README.md, "Serving overhead").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.auth import authenticate_lazily
from service.api.errors import backend_failure, error_response, validation_error_response
from service.core.errors import ApiError


class RelayRoute(APIRoute):
    """A chat route. FastAPI documents it from the endpoint's signature like any other
    route, but requests reach the endpoint through `get_route_handler` below instead of
    FastAPI's dependency solving: the principal comes from the verified-key cache (the
    database is asked only on a miss, as `PrincipalDep` would), and the body is validated
    in one pydantic call.
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
    """Innermost middleware: a POST to a chat path goes straight to its RelayRoute's handler,
    past Starlette's exception layer, FastAPI's exit stacks and route matching, none of
    which the chat paths need: Tailor's own middleware is outside this one, and the two
    errors a handler raises (and a database failure) are answered here as the app's handlers answer them. Other
    requests, and other methods on these paths (405), go through FastAPI as usual.
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
        except (SQLAlchemyError, OSError) as exc:
            if (answer := backend_failure(exc)) is None:
                raise
            response = error_response(answer)
        await response(scope, receive, send)
