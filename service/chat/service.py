"""The chat gateway: which vLLM serves a model, balancing over replicas, and vLLM's
answers mapped to Tailor's errors.

A request names a base model or a fine-tuned one. A fine-tuned model must belong to the
caller's project (anything else is the same 404 as a missing model) and goes to the vLLM
servers of its base, which resolve the `ft:` name to an adapter themselves. The gateway
never rewrites a body; it picks the replica with the fewest requests in flight (round
robin among equals), and skips for a moment a replica it could not connect to.

The hop to vLLM uses aiohttp rather than httpx: on the hot path of a short answer httpx
cost about 0.6 ms of CPU per request against aiohttp's 0.17 ms (measured on 2 cores,
bench/README.md), and on a CPU host that time is taken from vLLM.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inference.topology import upstreams
from service.auth import Principal
from service.errors import ApiError, InvalidRequest, ServiceUnavailable
from service.model_registry import BaseModelSpec
from service.models.service import find_fine_tuned, not_found
from service.settings import Settings
from service.ttl_cache import TtlCache

log = logging.getLogger("tailor.chat")

DOWN_SECONDS = 2.0
UNLOAD_TIMEOUT = 10.0
KEEPALIVE_SECONDS = 4.0


class UpstreamError(ApiError):
    status_code = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamTimeout(ApiError):
    status_code = 504
    type = "server_error"
    code = "timeout"


class NoReplica(Exception):
    """No vLLM server of a base model accepted a connection."""


@dataclass(eq=False)
class Replica:
    url: str
    outstanding: int = 0
    down_until: float = 0.0


@dataclass
class ReplicaPool:
    base_model: str
    replicas: list[Replica]
    _turn: itertools.count = field(default_factory=itertools.count)

    def candidates(self) -> list[Replica]:
        """Replicas in the order to try: up ones by fewest in flight, rotating among equals; down ones last."""
        n = len(self.replicas)
        start = next(self._turn) % n
        rotated = self.replicas[start:] + self.replicas[:start]
        now = time.monotonic()
        return sorted(rotated, key=lambda r: (r.down_until > now, r.outstanding))


async def base_model_of(
    sessionmaker: async_sessionmaker[AsyncSession],
    principal: Principal,
    base_models: dict[str, BaseModelSpec],
    model: str,
    owners: TtlCache[tuple[str, str], str],
) -> str:
    """The base model whose vLLM servers answer `model`, if the caller may use it. The
    database is asked only when `owners` has not seen the model in the last few seconds."""
    if model in base_models:
        return model
    if (base := owners.get((principal.project_id, model))) is not None:
        return base
    async with sessionmaker() as session:
        row = await find_fine_tuned(session, principal.project_id, model)
    if row is None:
        raise not_found(model)
    owners.put((principal.project_id, model), row.base_model)
    return row.base_model


class InferenceGateway:
    def __init__(self, upstreams: dict[str, list[str]], *, api_key: str | None, timeout: float, connect_timeout: float):
        self.pools = {name: ReplicaPool(name, [Replica(u) for u in urls]) for name, urls in upstreams.items() if urls}
        # Identity encoding: bodies are relayed as they come, so none may arrive compressed.
        headers = {"Accept-Encoding": "identity", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        # `timeout` bounds each wait for vLLM's next bytes (its answer, or a stream's next
        # event), not the whole request: a long stream that keeps flowing is fine.
        self.client = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=timeout),
            # Idle connections are dropped before vLLM's server drops them (uvicorn: 5 s), so
            # a request is never written to a connection the other side is closing.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        # (project, fine-tuned model) -> base model, confirmed by the database in the last
        # few seconds. A model deleted through another API process may stay here until it
        # expires, and that is safe: deletion removes the adapter from the store and from
        # vLLM before it returns, so vLLM answers 404, the same model_not_found.
        self.owners: TtlCache[tuple[str, str], str] = TtlCache(ttl=5.0)
        _live.add(self)

    async def aclose(self) -> None:
        _live.discard(self)
        await self.client.close()

    def pool(self, base_model: str) -> ReplicaPool:
        pool = self.pools.get(base_model)
        if pool is None:
            raise ServiceUnavailable(f"No inference server is configured for base model '{base_model}'.")
        return pool

    async def open(
        self, base_model: str, path: str, body: bytes, request_id: str | None
    ) -> tuple[Replica, aiohttp.ClientResponse]:
        """Send a request to a replica and return once its response headers arrive.

        The caller owns the response (release it) and the replica's in-flight count (`done`).
        A timeout raises TimeoutError."""
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        for replica in self.pool(base_model).candidates():
            replica.outstanding += 1
            try:
                return replica, await self.client.post(replica.url + path, data=body, headers=headers, allow_redirects=False)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:  # refused, no route, slow
                replica.outstanding -= 1
                replica.down_until = time.monotonic() + DOWN_SECONDS
                log.warning("vLLM replica %s for %s is unreachable: %s", replica.url, base_model, exc)
            except BaseException:
                replica.outstanding -= 1
                raise
        raise NoReplica(base_model)

    @staticmethod
    def done(replica: Replica) -> None:
        replica.outstanding -= 1

    async def unload(self, base_model: str, name: str) -> None:
        """Make every replica of `base_model` forget an adapter now; each also deletes its cached files."""
        self.owners.discard(lambda key: key[1] == name)
        pool = self.pools.get(base_model)
        if pool is None:
            return
        await asyncio.gather(*(self._unload_one(r, name) for r in pool.replicas))

    async def _unload_one(self, replica: Replica, name: str) -> None:
        try:
            async with self.client.post(
                replica.url + "/v1/unload_lora_adapter",
                json={"lora_name": name},
                timeout=aiohttp.ClientTimeout(total=UNLOAD_TIMEOUT),
            ) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not unload %s from %s: %r", name, replica.url, exc)
            return
        if response.status not in (200, 404):  # 404: that replica never loaded it
            log.warning("unloading %s from %s answered %s: %s", name, replica.url, response.status, text[:300])


# Gateways alive in this process, for the model-deletion hook (it runs in the Models
# service, which has no request at hand to find the app by).
_live: weakref.WeakSet[InferenceGateway] = weakref.WeakSet()


async def forget_model(base_model: str, name: str) -> None:
    """Called when a fine-tuned model is deleted: unload it from vLLM and evict its cached files."""
    await asyncio.gather(*(gateway.unload(base_model, name) for gateway in list(_live)))


def unreachable(base_model: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The inference server for '{base_model}' is not reachable. Start it with `tailor inference`, "
        "or point TAILOR_INFERENCE_URLS at running vLLM servers."
    )


def upstream_error(status: int, content: bytes, model: str) -> ApiError:
    """vLLM's error response as Tailor's error (one place for every status)."""
    message, param = f"The inference server answered {status}.", None
    try:
        body: Any = json.loads(content)
        info = body.get("error", body) if isinstance(body, dict) else {}
        if isinstance(info, dict):
            message = str(info.get("message") or message)
            param = info.get("param") if isinstance(info.get("param"), str) else None
    except ValueError:
        pass
    if status == 404:
        # vLLM found no such model or adapter: to the caller, exactly a missing model.
        return not_found(model)
    if status in (400, 413, 422):
        return InvalidRequest(message, param=param)
    if status in (429, 503):
        return ServiceUnavailable(message)
    if status in (401, 403):
        return UpstreamError("The inference server refused the gateway's credentials (check TAILOR_INFERENCE_API_KEY).")
    return UpstreamError(message)


def open_gateway(settings: Settings, base_models: dict[str, BaseModelSpec]) -> InferenceGateway:
    return InferenceGateway(
        upstreams(settings, base_models),
        api_key=settings.inference_api_key,
        timeout=settings.inference_timeout_seconds,
        connect_timeout=settings.inference_connect_timeout_seconds,
    )
