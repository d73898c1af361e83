"""A small in-process cache whose entries expire after a few seconds.

Used where the database is the truth but asking it on every request costs more than the
request itself (verified API keys, who owns a fine-tuned model). Only what the database
confirmed is put in, so new objects are seen at once; a change that removes access is
seen within `ttl` seconds. Bounded: when full it starts over rather than tracking order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float = 5.0, size: int = 10_000):
        self.ttl, self.size = ttl, size
        self._entries: dict[K, tuple[V, float]] = {}

    def get(self, key: K) -> V | None:
        hit = self._entries.get(key)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def put(self, key: K, value: V) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (value, time.monotonic() + self.ttl)

    def discard(self, where: Callable[[K], bool]) -> None:
        """Drop every entry whose key `where` accepts."""
        for key in [k for k in self._entries if where(k)]:
            del self._entries[key]
