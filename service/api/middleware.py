"""The one middleware every HTTP request passes through.

It gives the request its id (`x-request-id`, the client's own if it sent one), binds the
request's state to the log context so every line logged meanwhile carries that id, refuses
a NUL character in the URL (400) and a key over its rate limit (429, rate_limit.py), holds
reads and deletes for an admission slot, turns a crash into a 500 in the OpenAI envelope,
times the request for Prometheus by route template, and writes the access line once the response has been sent (Tailor's own `tailor.access`
line: uvicorn's is written before the answer goes out, which delays every answer), with
any secret sent in the query string (`?api_key=`) redacted.

Plain ASGI rather than BaseHTTPMiddleware, so streamed bodies pass through untouched, and
one layer rather than four, since each layer costs a relayed chat answer its share.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from urllib.parse import parse_qsl

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import rate_limit
from service.api.fields import NUL_MESSAGE
from service.api.metrics import ApiMetrics, route_template
from service.api.rate_limit import RateLimiter
from service.core.errors import envelope
from service.core.logs import request_state_var

log = logging.getLogger("tailor.errors")
access_log = logging.getLogger("tailor.access")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics, limiter: RateLimiter | None = None, admitted: int = 0):
        self.app = app
        self.metrics = metrics
        self.limiter = limiter
        # At most `admitted` reads and deletes run at once; the rest wait their turn in arrival
        # order (asyncio.Semaphore is fair). An event loop running 100 requests at once lets
        # some of them wait 20 times longer than the median (bench/README.md, "Control-plane
        # load"). 0: no bound.
        self.admission = asyncio.Semaphore(admitted) if admitted else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers", [])).get(_REQUEST_ID_BYTES)
        request_id = incoming.decode("latin-1")[:128] if incoming else f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_state_var.set(state)
        started_at = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering
        started = False
        limited = None
        # A CORS preflight carries no key and costs nothing: limiting it would only break browsers.
        if self.limiter is not None and scope["path"].startswith("/v1/") and scope.get("method") != "OPTIONS":
            limited = await self.limiter.check(rate_limit.identity(scope))

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _REQUEST_ID_BYTES]
                headers.append((_REQUEST_ID_BYTES, request_id.encode("latin-1")))
                if limited is not None:
                    headers += limited.headers()
                message = {**message, "headers": headers}
            await send(message)

        try:
            try:
                if limited is not None and not limited.allowed:
                    await _too_many(limited)(scope, receive, send_with_id)
                elif (refusal := _refuse_nul_in_url(scope)) is not None:
                    await refusal(scope, receive, send_with_id)
                elif self.admission is None or not _bounded(scope):
                    await self.app(scope, receive, send_with_id)
                else:
                    async with self.admission:
                        await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled error in request %s", request_id)
                if started:
                    raise
                body = envelope("The server had an error while processing your request.", "server_error", None, None)
                await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started_at
            self.metrics.observe_request(scope["method"], route_template(scope), status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, status, seconds)
            request_state_var.reset(token)


def _bounded(scope: Scope) -> bool:
    """Whether a request waits for admission: short reads and deletes. Not chat (relayed and
    streamed as long as generation takes), uploads or file downloads (as long as the bytes
    take): a few of those must never hold the rest of the API back."""
    return scope["method"] in ("GET", "DELETE") and not scope["path"].endswith("/content")


def _too_many(decision: rate_limit.Decision) -> JSONResponse:
    message = (
        f"Rate limit reached: {decision.limit} requests per minute for this key. "
        f"Try again in {decision.reset_seconds} s (TAILOR_RATE_LIMIT_PER_MINUTE sets the limit)."
    )
    body = envelope(message, "requests", None, "rate_limit_exceeded")
    return JSONResponse(body, status_code=429, headers={"retry-after": str(decision.reset_seconds)})


def _refuse_nul_in_url(scope: Scope) -> JSONResponse | None:
    """A 400 for a NUL character in the path or the query: no id, filter or cursor holds
    one, and PostgreSQL cannot even compare it."""
    query = scope.get("query_string", b"")
    if "\x00" not in scope["path"] and b"%00" not in query and b"\x00" not in query:
        return None
    param = next(
        (name for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if "\x00" in name + value), None
    )
    where = f"'{param}'" if param else "the URL path"
    body = envelope(f"Invalid value for {where}: it {NUL_MESSAGE}.", "invalid_request_error", param, None)
    return JSONResponse(body, status_code=400)


# Query parameters whose value is a credential: a client that puts its key in the URL must
# not get it written to the access log.
_SECRET_QUERY_VALUE = re.compile(r"(?i)(^|&)((?:api[_-]?key|key|access[_-]?token|token|secret|password)=)[^&]*")


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    client = scope.get("client")
    query = _SECRET_QUERY_VALUE.sub(r"\1\2REDACTED", scope.get("query_string", b"").decode("latin-1"))
    path = scope.get("path", "") + (f"?{query}" if query else "")
    access_log.info(
        '%s "%s %s HTTP/%s" %d %.1fms',
        f"{client[0]}:{client[1]}" if client else "-",
        scope.get("method"),
        path,
        scope.get("http_version", "1.1"),
        status,
        1000 * seconds,
    )
