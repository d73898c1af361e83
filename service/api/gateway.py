"""The API's handle on vLLM: which servers serve a base model, balancing over replicas,
unloading adapters, and vLLM's answers mapped to Tailor's errors.

A request goes to the vLLM servers of its model's base, which resolve an `ft:` name to an
adapter themselves. The gateway never rewrites a body; it picks the replica with the
fewest requests in flight (round robin among equals), and skips for a moment a replica it
could not connect to.

The hop to vLLM uses a small client of its own (service/api/upstream.py says why).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from service.api.ttl_cache import TtlCache
from service.api.upstream import UpstreamClient, UpstreamConnectError, UpstreamResponse
from service.core.errors import ApiError, InvalidRequest, ModelNotFound, ServiceUnavailable
from service.core.registry import BaseModelSpec
from service.core.settings import Settings
from service.core.topology import upstreams

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


class InferenceGateway:
    def __init__(self, upstreams: dict[str, list[str]], *, api_key: str | None, timeout: float, connect_timeout: float):
        self.pools = {name: ReplicaPool(name, [Replica(u) for u in urls]) for name, urls in upstreams.items() if urls}
        # `timeout` bounds each wait for vLLM's next bytes (its answer, or a stream's next
        # event), not the whole request: a long stream that keeps flowing is fine. Idle
        # connections are dropped before vLLM's server drops them (uvicorn: 5 s), so a
        # request is never written to a connection the other side is closing.
        self.client = UpstreamClient(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=timeout,
            connect_timeout=connect_timeout,
            keepalive=KEEPALIVE_SECONDS,
        )
        # (project, fine-tuned model) -> base model, confirmed by the database in the last
        # few seconds. A model deleted through another API process may stay here until it
        # expires, and that is safe: deletion removes the adapter from the store and from
        # vLLM before it returns, so vLLM answers 404, the same model_not_found.
        self.owners: TtlCache[tuple[str, str], str] = TtlCache(ttl=5.0)

    async def aclose(self) -> None:
        await self.client.close()

    def pool(self, base_model: str) -> ReplicaPool:
        pool = self.pools.get(base_model)
        if pool is None:
            raise ServiceUnavailable(f"No inference server is configured for base model '{base_model}'.")
        return pool

    async def open(self, base_model: str, path: str, body: bytes, request_id: str | None) -> tuple[Replica, UpstreamResponse]:
        """Send a request to a replica and return once its response headers arrive.

        The caller owns the response (release it) and the replica's in-flight count (`done`).
        A timeout raises TimeoutError."""
        headers = {"X-Request-Id": request_id} if request_id else None
        for replica in self.pool(base_model).candidates():
            replica.outstanding += 1
            try:
                return replica, await self.client.post(replica.url, path, body, headers)
            except UpstreamConnectError as exc:
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
            response = await self.client.post(
                replica.url, "/v1/unload_lora_adapter", json.dumps({"lora_name": name}).encode(), timeout=UNLOAD_TIMEOUT
            )
            try:
                text = (await response.read()).decode("utf-8", "replace")
            finally:
                response.release()
        except (ConnectionError, TimeoutError) as exc:
            log.warning("could not unload %s from %s: %r", name, replica.url, exc)
            return
        if response.status not in (200, 404):  # 404: that replica never loaded it
            log.warning("unloading %s from %s answered %s: %s", name, replica.url, response.status, text[:300])


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
        return ModelNotFound.named(model)
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
