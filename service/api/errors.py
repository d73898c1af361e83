"""Every error the API answers, in the OpenAI envelope.

Services raise `ApiError` subclasses (service/core/errors.py); `install_error_handlers`
maps them, FastAPI's validation errors and unknown routes to
`{"error": {"message", "type", "param", "code"}}`, and `error_responses` documents that
envelope on the routes, so the generated OpenAPI shows what clients really get.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import ApiError, envelope


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The OpenAI error envelope (the spec's ErrorResponse)."""

    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a router or route: the envelope for each of `statuses`, and
    for any other error ("default", which also keeps FastAPI from advertising its 422)."""
    documented: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": HTTPStatus(status).phrase} for status in statuses
    }
    documented["default"] = {"model": ErrorResponse, "description": "Any other error, in the same envelope."}
    return documented


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status_code)


def param_from_location(loc: tuple[Any, ...]) -> str | None:
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


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """A 400 in the OpenAI envelope naming the first field at fault."""
    errors = list(exc.errors())
    first = errors[0] if errors else {"msg": "Invalid request", "loc": ()}
    param = param_from_location(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return JSONResponse(envelope(_validation_message(first, None), "invalid_request_error"), status_code=400)
    message = _validation_message(first, param)
    # A union ("auto" or a number) fails once per branch; say what every branch wanted.
    siblings = [e for e in errors[1:] if param_from_location(tuple(e.get("loc", ()))) == param]
    if siblings and first.get("type") != "missing":
        wanted = " or ".join(e.get("msg", "").removeprefix("Input should be ") for e in [first, *siblings])
        message = f"Invalid value for '{param}': should be {wanted} (got {first.get('input')!r})."
    return JSONResponse(envelope(message, "invalid_request_error", param, None), status_code=400)


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc)


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
