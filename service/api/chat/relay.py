"""The response that carries one request to vLLM and vLLM's answer back.

It is a plain ASGI response rather than a StreamingResponse for two reasons: the upstream
call must start inside it (a non-streamed answer sends no headers until it is complete,
and a client that leaves meanwhile must still cancel it), and it watches for the client's
disconnect the whole time, whatever ASGI version the server speaks. Leaving closes the
upstream connection, which is how vLLM learns to abort the request.

Streamed bodies are relayed as they arrive, event by event; bodies and events are re-encoded
only to drop the nulls the spec does not allow (spec_shape.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.api.chat.spec_shape import EventCleaner, clean_body
from service.api.errors import error_response
from service.api.gateway import (
    InferenceGateway,
    NoReplica,
    UpstreamError,
    UpstreamTimeout,
    unreachable,
    upstream_error,
)
from service.api.upstream import UpstreamResponse
from service.core.errors import ApiError

log = logging.getLogger("tailor.chat")


class UpstreamRelay(Response):
    def __init__(self, gateway: InferenceGateway, base_model: str, path: str, body: bytes, model: str, request_id: str | None):
        self.gateway = gateway
        self.base_model = base_model
        self.path = path
        self.body_bytes = body
        self.model = model
        self.request_id = request_id
        self.background = None
        self._started = False  # response headers sent: errors can no longer change the status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.create_task(self._relay(scope, receive, send))
        watcher = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({relay, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not relay.done():
                # The client left (or we are being cancelled): stop the upstream request.
                relay.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        if relay.cancelled():
            log.info("client left; aborted the upstream request for %s", self.model)
        elif (exc := relay.exception()) is not None:
            raise exc

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            replica, upstream = await self.gateway.open(self.base_model, self.path, self.body_bytes, self.request_id)
        except NoReplica:
            return await error_response(unreachable(self.base_model))(scope, receive, send)
        except (TimeoutError, ConnectionError) as exc:
            return await self._fail(scope, receive, send, self._failure(exc))
        try:
            if upstream.status >= 400:
                content = await upstream.read()
                return await self._fail(scope, receive, send, upstream_error(upstream.status, content, self.model))
            media_type = upstream.headers.get("content-type", "application/json")
            if media_type.startswith("text/event-stream"):
                await self._stream(upstream, send, media_type)
            else:
                content = clean_body(await upstream.read())
                await Response(content, upstream.status, media_type=media_type)(scope, receive, send)
        except (TimeoutError, ConnectionError) as exc:
            if not self._started:
                await self._fail(scope, receive, send, self._failure(exc))
        finally:
            upstream.release()  # kept if read whole; else closed, which aborts the request in vLLM
            self.gateway.done(replica)

    async def _stream(self, upstream: UpstreamResponse, send: Send, media_type: str) -> None:
        headers = [(b"content-type", media_type.encode("latin-1")), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        self._started = True
        events = EventCleaner()
        try:
            async for chunk in upstream.chunks():
                if out := events.feed(chunk):
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            if rest := events.flush():
                await send({"type": "http.response.body", "body": rest, "more_body": True})
        except (TimeoutError, ConnectionError) as exc:
            # Headers are gone already: say so the way vLLM reports a failure mid-stream.
            error = self._failure(exc)
            event = error.envelope()
            await send({"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _failure(self, exc: BaseException) -> ApiError:
        """What the caller is told when vLLM timed out or the connection to it failed."""
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(
                f"The inference server for '{self.base_model}' did not answer in time (TAILOR_INFERENCE_TIMEOUT_SECONDS)."
            )
        return UpstreamError(f"The inference server for '{self.base_model}' failed: {exc!r}")

    async def _fail(self, scope: Scope, receive: Receive, send: Send, exc: ApiError) -> None:
        await error_response(exc)(scope, receive, send)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
