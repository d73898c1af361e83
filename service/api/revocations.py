"""Revoking a key everywhere within a second: `tailor keys revoke` publishes the key's hash
on a Redis channel, and every API replica, subscribed at start, drops it from its cache of
verified keys (auth.py) at once. Redis carries the news, the database the truth: a replica
that misses a message (Redis away) still stops accepting the key when its cache entry
expires, and one that reconnects forgets every cached key, since it may have missed some.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("tailor.auth")

CHANNEL = "tailor:keys:revoked"
RECONNECT_SECONDS = 1.0


async def publish_revocations(redis_url: str, key_hashes: list[str]) -> int:
    """Tell every replica; returns how many subscribers heard it."""
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        heard = 0
        for key_hash in key_hashes:
            heard = await client.publish(CHANNEL, key_hash)
        return heard
    finally:
        await client.aclose()


async def follow_revocations(redis_url: str, forget: Callable[[str], None], forget_all: Callable[[], None]) -> None:
    """Run until cancelled: `forget(hash)` for every revocation published, `forget_all()`
    after each (re)subscription."""
    while True:
        client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                forget_all()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        forget(data.decode() if isinstance(data, bytes) else str(data))
        except (RedisError, OSError) as exc:
            log.warning("key revocations: Redis unavailable (%r); cached keys expire as usual", exc)
        finally:
            await client.aclose()
        await asyncio.sleep(RECONNECT_SECONDS)
