"""The vLLM plugin's parts that need no vLLM: names -> store keys, the store readers, the
bounded adapter cache (unload before delete), and the middleware's cache bookkeeping."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "inference" / "vllm_plugin"
sys.path.insert(0, str(PLUGIN_DIR))

from service.core.naming import adapter_prefix, checkpoint_model_name, fine_tuned_model_name
from service.core.tables import FineTuningJob
from tailor_vllm_plugin import names
from tailor_vllm_plugin.cache import MARKER, AdapterCache
from tailor_vllm_plugin.middleware import TailorAdapterMiddleware
from tailor_vllm_plugin.runtime import reset_runtime, runtime
from tailor_vllm_plugin.store import LocalStore, open_store

# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["pirate", None, "v1.2_x-y"])
def test_names_point_where_the_trainer_stores_adapters(suffix: str | None) -> None:
    job = FineTuningJob(id="ftjob-AbC123xyz", model="SmolLM2-135M-Instruct", suffix=suffix)
    final = fine_tuned_model_name(job, "acme")
    ref = names.parse(final)
    assert ref is not None and ref.base == "SmolLM2-135M-Instruct" and ref.step is None
    assert ref.prefix == adapter_prefix(job.id, None)
    ckpt = names.parse(checkpoint_model_name(final, 40))
    assert ckpt is not None and ckpt.step == 40 and ckpt.prefix == adapter_prefix(job.id, 40)


def test_names_with_a_colon_in_the_base_model() -> None:
    ref = names.parse("ft:org:model:acme:s:abc")
    assert ref is not None and ref.base == "org:model" and ref.job_id == "ftjob-abc"


@pytest.mark.parametrize(
    "name",
    [
        "SmolLM2-135M-Instruct",
        "ft:",
        "ft:base:proj:suffix",
        "ft:base:proj:s:../../etc",
        "ft:base:proj:s:a/b",
        "ft:base:pr/oj:s:abc",
        "ft::proj:s:abc",
        "ft:base:proj:s:abc:ckpt-step-x",
        "ft:base:proj:s:ab.c",
    ],
)
def test_names_that_are_not_tailor_adapters(name: str) -> None:
    assert names.parse(name) is None


# --- store ----------------------------------------------------------------------------


def _adapter(directory: Path, payload: bytes = b"weights") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps({"r": 16}))
    (directory / "adapter_model.safetensors").write_bytes(payload)


def test_local_store_downloads_a_folder_and_not_its_neighbour(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    _adapter(root / "adapters/ftjob-a/step-1")
    _adapter(root / "adapters/ftjob-a/step-10", b"other")
    store = open_store(root.as_uri())
    assert isinstance(store, LocalStore)
    assert store.exists("adapters/ftjob-a/step-1/adapter_config.json")
    assert not store.exists("adapters/ftjob-a/step-2/adapter_config.json")
    out = tmp_path / "out"
    assert store.download_prefix("adapters/ftjob-a/step-1/", out) == len(b"weights") + len(json.dumps({"r": 16}))
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    with pytest.raises(ValueError):
        store.exists("../outside")


def test_s3_store_downloads_a_folder(s3_endpoint: tuple[str, str], tmp_path: Path) -> None:
    from service.core.storage import open_store as service_store

    endpoint, bucket = s3_endpoint
    prefix = f"plugin-{uuid.uuid4().hex[:8]}"
    writer = service_store(f"s3://{bucket}/{prefix}", s3_endpoint_url=endpoint, s3_region="us-east-1")
    source = tmp_path / "adapter"
    _adapter(source)
    writer.put_dir("adapters/ftjob-s3/final", source)
    writer.put_bytes("adapters/ftjob-s3/final-other/adapter_config.json", b"{}")
    store = open_store(f"s3://{bucket}/{prefix}", endpoint, "us-east-1")
    assert store.exists("adapters/ftjob-s3/final/adapter_config.json")
    assert not store.exists("adapters/ftjob-s3/missing/adapter_config.json")
    out = tmp_path / "out"
    store.download_prefix("adapters/ftjob-s3/final/", out)
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


# --- cache ----------------------------------------------------------------------------


def _fill(cache: AdapterCache, name: str, size: int) -> Path:
    def download(directory: Path) -> int:
        _adapter(directory, b"x" * size)
        return size

    return cache.fetch(name, download)


def _age(cache: AdapterCache, name: str, seconds_ago: float) -> None:
    path = cache.get(name)
    assert path is not None
    then = time.time() - seconds_ago
    os.utime(path / MARKER, (then, then))


def test_cache_downloads_once_and_reuses(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path, max_bytes=10_000)
    calls = []

    def download(directory: Path) -> int:
        calls.append(directory)
        _adapter(directory)
        return 7

    first = cache.fetch("ft:a", download)
    assert cache.fetch("ft:a", download) == first and len(calls) == 1
    assert (first / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not list((tmp_path / "tmp").iterdir()), "no download leftovers"


def test_cache_refuses_a_folder_without_adapter_config(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path, max_bytes=10_000)
    with pytest.raises(FileNotFoundError):
        cache.fetch("ft:empty", lambda directory: 0)
    assert cache.get("ft:empty") is None and not list((tmp_path / "tmp").iterdir())


def test_cache_evicts_least_recently_used_and_unloads_first(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path, max_bytes=2_500, grace_seconds=5)
    for name, age in (("ft:old", 300), ("ft:mid", 200), ("ft:new", 100)):
        _fill(cache, name, 1000)
        _age(cache, name, age)
    cache.touch("ft:old")  # used just now: "ft:mid" is the least recently used, and "ft:old" is in grace
    _fill(cache, "ft:incoming", 1000)
    unloaded: list[str] = []

    async def unload(name: str) -> None:
        assert cache.get(name) is not None, "files must still be there while vLLM unloads"
        unloaded.append(name)

    evicted = asyncio.run(cache.make_room(keep={"ft:incoming"}, unload=unload))
    assert evicted == unloaded == ["ft:mid", "ft:new"]
    assert cache.get("ft:mid") is None and cache.get("ft:new") is None
    assert cache.get("ft:old") is not None and cache.get("ft:incoming") is not None


def test_cache_keeps_files_when_unloading_fails(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path, max_bytes=1_000, grace_seconds=0)
    _fill(cache, "ft:a", 800)
    _age(cache, "ft:a", 60)
    _fill(cache, "ft:b", 800)

    async def unload(name: str) -> None:
        raise RuntimeError("vLLM is busy")

    assert asyncio.run(cache.make_room(keep={"ft:b"}, unload=unload)) == []
    assert cache.get("ft:a") is not None


# --- middleware -----------------------------------------------------------------------


@pytest.fixture
def plugin_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TAILOR_ADAPTER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TAILOR_ADAPTER_CACHE_MAX_BYTES", "100000")
    reset_runtime()
    yield runtime()
    reset_runtime()


def _call(middleware: Any, path: str, body: bytes, chunk: int = 10) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "app": "the-vllm-app"}
    asyncio.run(middleware(scope, receive, send))
    return sent


def _inner(status: int) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        while message.get("more_body"):
            message = await receive()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.mark.parametrize(("status", "evicted"), [(200, True), (404, True), (401, False), (500, False)])
def test_middleware_evicts_files_after_vllm_unloads(plugin_runtime: Any, status: int, evicted: bool) -> None:
    _fill(plugin_runtime.cache, "ft:gone", 10)
    sent = _call(
        TailorAdapterMiddleware(_inner(status)), "/v1/unload_lora_adapter", json.dumps({"lora_name": "ft:gone"}).encode()
    )
    assert sent[0]["status"] == status
    assert (plugin_runtime.cache.get("ft:gone") is None) is evicted
    assert plugin_runtime.app == "the-vllm-app"


@pytest.mark.parametrize("prompt_bytes", [2, 300_000])
def test_middleware_marks_the_requested_adapter_as_used(plugin_runtime: Any, prompt_bytes: int) -> None:
    _fill(plugin_runtime.cache, "ft:base:p:s:abc", 10)
    _age(plugin_runtime.cache, "ft:base:p:s:abc", 600)
    # The SDKs send `messages` before `model`: a long prompt puts the name chunks later.
    body = json.dumps({"messages": [{"role": "user", "content": "h" * prompt_bytes}], "model": "ft:base:p:s:abc"}).encode()
    sent = _call(TailorAdapterMiddleware(_inner(200)), "/v1/chat/completions", body, chunk=65_536)
    assert sent[0]["status"] == 200
    [entry] = plugin_runtime.cache.entries()
    assert time.time() - entry.last_used < 60
