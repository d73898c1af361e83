"""A small in-process cache whose entries expire after a few seconds.

Used where the database is the truth but asking it on every request costs more than the
request itself (verified API keys, who owns a fine-tuned model). Only what the database
confirmed is put in, so new objects are seen at once; a change that removes access is
seen within `ttl` seconds. Bounded: when full it starts over rather than tracking order.

`get(key, reload)` refreshes ahead: an entry past half its life is reloaded in the
background while the caller gets the cached value, so steady traffic never waits on the
database (bench/README.md has what a cold lookup costs a relayed chat answer). The
expiry is untouched: a reload that finds the access gone drops the entry, and one that
fails leaves it to expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("tailor.cache")

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float = 5.0, size: int = 10_000):
        self.ttl, self.size = ttl, size
        self._entries: dict[K, tuple[V, float]] = {}
        self._reloading: dict[K, asyncio.Task[None]] = {}

    def get(self, key: K, reload: Callable[[], Awaitable[V | None]] | None = None) -> V | None:
        """The cached value, or None when absent or expired. With `reload` (called only
        when needed; it must run in an event loop), an entry in the second half of its life
        is refreshed in the background: `reload` returns the current value, or None when
        there is none any more."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        value, expires = hit
        left = expires - time.monotonic()
        if left <= 0:
            return None
        if reload is not None and left < self.ttl / 2 and key not in self._reloading:
            self._reloading[key] = asyncio.get_running_loop().create_task(self._reload(key, reload))
        return value

    async def _reload(self, key: K, reload: Callable[[], Awaitable[V | None]]) -> None:
        try:
            value = await reload()
        except Exception:
            log.warning("could not refresh a cache entry; it expires as usual", exc_info=True)
        else:
            if value is None:
                self._entries.pop(key, None)
            else:
                self.put(key, value)
        finally:
            del self._reloading[key]

    def put(self, key: K, value: V) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (value, time.monotonic() + self.ttl)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def discard(self, where: Callable[[K], bool]) -> None:
        """Drop every entry whose key `where` accepts."""
        for key in [k for k in self._entries if where(k)]:
            del self._entries[key]
