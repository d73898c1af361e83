"""The few-seconds cache behind verified API keys and model ownership (service/ttl_cache.py)."""

from __future__ import annotations

import time

from service.auth import Principal
from service.ttl_cache import TtlCache


def test_a_verified_key_is_remembered_until_its_ttl() -> None:
    cache = TtlCache[str, Principal](ttl=0.2)
    principal = Principal(project_id="proj_a", project_name="alpha")
    assert cache.get("h1") is None
    cache.put("h1", principal)
    assert cache.get("h1") == principal
    assert cache.get("h2") is None
    time.sleep(0.25)
    assert cache.get("h1") is None, "past the TTL the database must be asked again (a key may be revoked)"


def test_the_cache_stays_bounded() -> None:
    cache = TtlCache[str, Principal](ttl=60, size=3)
    for i in range(10):
        cache.put(f"h{i}", Principal(project_id=f"p{i}", project_name=f"n{i}"))
    assert len(cache._entries) <= 3
    assert cache.get("h9") is not None


def test_discard_drops_the_entries_it_selects() -> None:
    cache: TtlCache[tuple[str, str], str] = TtlCache(ttl=60)
    cache.put(("proj_a", "ft:m:1"), "base")
    cache.put(("proj_b", "ft:m:1"), "base")
    cache.put(("proj_a", "ft:m:2"), "base")
    cache.discard(lambda key: key[1] == "ft:m:1")
    assert cache.get(("proj_a", "ft:m:1")) is None and cache.get(("proj_b", "ft:m:1")) is None
    assert cache.get(("proj_a", "ft:m:2")) == "base"
