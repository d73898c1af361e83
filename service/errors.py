"""Errors in the OpenAI envelope.

Services raise `ApiError` subclasses; one place (`install_error_handlers`) maps every
exception, including FastAPI's validation errors, unknown routes and crashes, to
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("tailor.errors")

REQUEST_ID_HEADER = "x-request-id"


class ApiError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ApiError):
    pass


class NotFound(ApiError):
    status_code = 404


class ModelNotFound(NotFound):
    code = "model_not_found"


class Unauthorized(ApiError):
    status_code = 401
    code = "invalid_api_key"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "file_too_large"


class ServiceUnavailable(ApiError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(envelope(exc.message, exc.type, exc.param, exc.code), status_code=exc.status_code)


def _param_from_location(loc: tuple[Any, ...]) -> str | None:
    # FastAPI prefixes locations with where the value came from ("body", "query", "path").
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    # pydantic names union branches ("int", "literal['auto']"); they are not fields.
    parts = [p for p in parts if not (p.startswith(("literal[", "function-")) or p in ("int", "float", "str", "bool"))]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _validation_message(err: dict[str, Any], param: str | None) -> str:
    msg = err.get("msg", "Invalid value")
    if err.get("type") == "missing":
        return f"Missing required parameter: '{param}'." if param else "Missing required parameter."
    if err.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request. Send valid JSON."
    if err.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}"
    return f"Invalid value for '{param}': {msg}." if param else f"{msg}."


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc)


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """A 400 in the OpenAI envelope naming the first field at fault."""
    errors = list(exc.errors())
    first = errors[0] if errors else {"msg": "Invalid request", "loc": ()}
    param = _param_from_location(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return JSONResponse(envelope(_validation_message(first, None), "invalid_request_error"), status_code=400)
    message = _validation_message(first, param)
    # A union ("auto" or a number) fails once per branch; say what every branch wanted.
    siblings = [e for e in errors[1:] if _param_from_location(tuple(e.get("loc", ()))) == param]
    if siblings and first.get("type") != "missing":
        wanted = " or ".join(e.get("msg", "").removeprefix("Input should be ") for e in [first, *siblings])
        message = f"Invalid value for '{param}': should be {wanted} (got {first.get('input')!r})."
    return JSONResponse(envelope(message, "invalid_request_error", param, None), status_code=400)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
        body = envelope(message, "invalid_request_error", None, "unknown_url")
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
        body = envelope(message, "invalid_request_error", None, "method_not_allowed")
    else:
        body = envelope(str(exc.detail), "invalid_request_error", None, None)
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)


class RequestIdMiddleware:
    """Gives every response an `x-request-id` and turns crashes into a 500 envelope.

    It is plain ASGI (not BaseHTTPMiddleware) so streamed bodies pass through untouched,
    and it sits inside Starlette's ServerErrorMiddleware so even a 500 carries the id.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers", [])).get(REQUEST_ID_HEADER.encode())
        request_id = incoming.decode("latin-1")[:128] if incoming else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER.encode()]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if started:
                raise
            response = JSONResponse(
                envelope("The server had an error while processing your request.", "server_error", None, None),
                status_code=500,
            )
            await response(scope, receive, send_with_id)


class PermissionDenied(ApiError):
    status_code = 403
    code = "insufficient_permissions"
