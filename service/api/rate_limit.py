"""Per-key request limits, shared by every API replica through Redis: a fixed window of one
minute per key (its SHA-256, never the key), counted with one pipelined INCR and EXPIRE.

Every /v1 answer carries OpenAI's `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`
and `x-ratelimit-reset-requests`; past the limit the answer is a 429 in the envelope with
`retry-after`, which the SDKs wait out before their retry. Redis away: requests pass
(availability before accounting) without waiting on it for 5 s after a failure, and a
warning says so at most once a minute.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.types import Scope

log = logging.getLogger("tailor.ratelimit")

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit-requests", str(self.limit).encode()),
            (b"x-ratelimit-remaining-requests", str(self.remaining).encode()),
            (b"x-ratelimit-reset-requests", f"{self.reset_seconds}s".encode()),
        ]


def identity(scope: Scope) -> str:
    """Who is counted: the bearer key's hash, or the client's address without one."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return "key:" + hashlib.sha256(value.partition(b" ")[2].strip()).hexdigest()[:32]
    client = scope.get("client")
    return f"addr:{client[0] if client else '-'}"


class RateLimiter:
    def __init__(self, redis_url: str, per_minute: int):
        self.per_minute = per_minute
        self._redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        self._warned_at = 0.0
        self._away_until = 0.0  # after a failure, Redis is left alone a few seconds

    async def check(self, who: str) -> Decision | None:
        """The decision for one more request by `who`; None when Redis cannot say."""
        now = time.time()
        if now < self._away_until:
            return None
        window = int(now // WINDOW_SECONDS)
        key = f"tailor:ratelimit:{who}:{window}"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                count, _ = await pipe.incr(key).expire(key, WINDOW_SECONDS * 2).execute()
        except (RedisError, OSError) as exc:
            self._away_until = now + 5  # no request waits on a Redis that does not answer
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("rate limits not applied: Redis unavailable (%r)", exc)
            return None
        reset = max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))
        return Decision(count <= self.per_minute, self.per_minute, max(0, self.per_minute - count), reset)

    async def aclose(self) -> None:
        await self._redis.aclose()
