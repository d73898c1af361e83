"""The few-seconds cache behind verified API keys and model ownership (service/api/ttl_cache.py)."""

from __future__ import annotations

import time

from service.api.auth import Principal
from service.api.ttl_cache import TtlCache


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


def test_entries_are_refreshed_ahead_in_the_background() -> None:
    import asyncio

    cache: TtlCache[str, str] = TtlCache(ttl=1.0)
    calls: list[str] = []

    def reload_to(value: str | None, fail: bool = False):
        async def reload() -> str | None:
            calls.append(f"{value}{' fails' if fail else ''}")
            if fail:
                raise RuntimeError("database away")
            return value

        return reload

    async def main() -> None:
        cache.put("k", "v1")
        assert cache.get("k", reload_to("v2")) == "v1" and calls == []  # young: no reload
        await asyncio.sleep(0.6)  # past half its life
        assert cache.get("k", reload_to("v2")) == "v1"  # still served at once...
        assert cache.get("k", reload_to("v2")) == "v1"  # ...and only one reload is started
        await asyncio.sleep(0.1)
        assert calls == ["v2"]
        await asyncio.sleep(0.45)  # v1 would have expired; the reload renewed the entry
        assert cache.get("k") == "v2"

        cache.put("k", "v3")
        await asyncio.sleep(0.6)
        assert cache.get("k", reload_to(None)) == "v3"
        await asyncio.sleep(0.1)
        assert cache.get("k") is None, "a reload that finds nothing (a revoked key) drops the entry"

        cache.put("k", "v4")
        await asyncio.sleep(0.6)
        assert cache.get("k", reload_to("v5", fail=True)) == "v4"
        await asyncio.sleep(0.1)
        assert cache.get("k") == "v4"  # a failed reload leaves it...
        await asyncio.sleep(0.4)
        assert cache.get("k") is None  # ...to expire as usual

    asyncio.run(main())
    assert calls == ["v2", "None", "v5 fails"]
