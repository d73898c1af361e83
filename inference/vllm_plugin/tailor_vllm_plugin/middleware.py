"""ASGI middleware for vLLM's API server (`--middleware
tailor_vllm_plugin.middleware.TailorAdapterMiddleware`). Three small jobs:

- it hands vLLM's app to the resolver, which needs it to unload adapters it evicts;
- a generation request for a cached adapter marks that adapter as used (the cache's LRU
  order), read from the request body as it streams past, without holding it back;
- once vLLM has answered `POST /v1/unload_lora_adapter` (vLLM's own route, behind its
  `--api-key`), the adapter's cached files are deleted: Tailor's API calls that route when
  a model is deleted, so the files go from whichever host serves it, after vLLM forgot it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from tailor_vllm_plugin.runtime import runtime

log = logging.getLogger("tailor.vllm_plugin")

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
UNLOAD_PATH = "/v1/unload_lora_adapter"
_MODEL = re.compile(rb'"model"\s*:\s*"(ft:[^"\\]{1,1024})"')


class TailorAdapterMiddleware:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = runtime()
        if state.app is None and scope.get("app") is not None:
            state.app = scope["app"]
        path = scope.get("path", "")
        if scope.get("method") == "POST" and path in GENERATION_PATHS:
            await self.app(scope, _touching(receive, state), send)
        elif scope.get("method") == "POST" and path == UNLOAD_PATH:
            await self._unload(scope, receive, send, state)
        else:
            await self.app(scope, receive, send)

    async def _unload(self, scope: dict[str, Any], receive: Any, send: Any, state: Any) -> None:
        body = bytearray()
        status = 0

        async def recording_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def recording_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, recording_receive, recording_send)
        # 200: vLLM just unloaded it; 404: vLLM did not hold it. Either way it is not loaded.
        if status in (200, 404):
            try:
                name = json.loads(bytes(body)).get("lora_name")
            except (ValueError, AttributeError):
                return
            if isinstance(name, str) and name:
                await asyncio.to_thread(state.cache.evict, name)


def _touching(receive: Any, state: Any) -> Any:
    """A `receive` that passes every message on and notes the `ft:` model it names.

    The body is scanned as it streams past (the SDKs put `model` after `messages`, so it may
    come late), keeping only a short tail between chunks."""
    window = b""
    done = False

    async def wrapped() -> dict[str, Any]:
        nonlocal window, done
        message = await receive()
        if not done and message["type"] == "http.request":
            window = window[-2048:] + message.get("body", b"")
            if (match := _MODEL.search(window)) is not None:
                state.cache.touch(match.group(1).decode("utf-8", "replace"))
                done = True
            elif not message.get("more_body"):
                done = True
        return message

    return wrapped
