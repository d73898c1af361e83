"""Every error the API answers, in the OpenAI envelope.

Services raise `ApiError` subclasses (service/core/errors.py); `install_error_handlers`
maps them, FastAPI's validation errors and unknown routes to
`{"error": {"message", "type", "param", "code"}}`, and `error_responses` documents that
envelope on the routes, so the generated OpenAPI shows what clients really get.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.db import database_failure
from service.core.errors import ApiError, BackendUnavailable, envelope
from service.core.storage import is_store_failure

log = logging.getLogger("tailor.errors")


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
    headers = {"retry-after": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=headers)


def param_from_location(loc: tuple[Any, ...]) -> str | None:
    # FastAPI prefixes locations with where the value came from ("body", "query", "path").
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    # pydantic names union branches ("int", "literal['auto']"); they are not fields.
    parts = [
        p for p in parts if not (p.startswith(("literal[", "function-", "constrained-")) or p in ("int", "float", "str", "bool"))
    ]
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
        allowed = _allowed_methods(request)
        message = f"Method {request.method} is not allowed for {request.url.path}; use {', '.join(allowed)}."
        body = envelope(message, "invalid_request_error", None, "method_not_allowed")
        return JSONResponse(body, status_code=405, headers={"allow": ", ".join(allowed)})
    else:
        body = envelope(str(exc.detail), "invalid_request_error", None, None)
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's own 405 names only the first
    matching route's, and GET and DELETE of one object are two routes. Read from the OpenAPI
    document, the public list of every route (a 405 is rare; it is built once)."""
    methods: set[str] = set()
    for pattern, served in _path_methods(request.app):
        if pattern.fullmatch(request.url.path):
            methods |= served
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _path_methods(app: FastAPI) -> list[tuple[re.Pattern[str], set[str]]]:
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "path_methods", None)
    if table is None:
        table = [
            (re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))), {m.upper() for m in operations})
            for path, operations in app.openapi().get("paths", {}).items()
        ]
        app.state.path_methods = table
    return table


def backend_failure(exc: Exception) -> ApiError | None:
    """The answer for a failure of the database or the object store that is not a bug: a
    value the database cannot hold is a 400, anything unreachable or unwritable a 503 with
    `retry-after`. None for anything else (a 500)."""
    if isinstance(exc, SQLAlchemyError):
        return database_failure(exc)
    if is_store_failure(exc):
        # The reason stays in the log: it names paths and hosts the caller has no use for.
        log.warning("backend failure: %r", exc)
        reason = "refused the connection" if isinstance(exc, ConnectionError) else f"failed ({type(exc).__name__})"
        return BackendUnavailable(f"A storage backend (database or object store) {reason}. Try again shortly.")
    return None


async def _on_backend_error(_: Request, exc: Exception) -> JSONResponse:
    answer = backend_failure(exc)
    if answer is None:
        raise exc  # a bug, not the caller's input: the middleware answers 500 and logs it
    return error_response(answer)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    for backend_error in (SQLAlchemyError, OSError, BotoCoreError, ClientError, Boto3Error):
        app.add_exception_handler(backend_error, _on_backend_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
