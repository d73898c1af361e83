"""Serving overhead: the same requests sent straight to vLLM and through Tailor's gateway.

Starts a private redis-server, `tailor inference` (vLLM CPU build, Tailor's resolver) and
`tailor serve` (SQLite, a local object store) in a scratch directory, writes rank-16 LoRA
adapters of SmolLM2-135M-Instruct (random weights, all linear projections, the trainer's
shape) into the store and registers them as fine-tuned models of a project, then measures:

- throughput at N concurrent streams (default 16): completion tokens per second, request
  latency p50/p99 and time to first token, direct vs gateway, rounds interleaved D G G D…
  so drift on a shared machine falls on both sides alike;
- added latency of short non-streamed answers (1 token): the same request direct, through a
  bare pass-through proxy (the price of any extra hop here) and through the gateway;
- cold load of a never-used adapter (resolve, download, load, answer) against the same
  adapter warm.

Every generation uses `ignore_eos` so both sides do exactly the same work.

    .venv/bin/python bench/serve_overhead.py                # about 6 minutes on 2 cores
    .venv/bin/python bench/serve_overhead.py --json out.json

See bench/README.md ("Serving overhead") for measured figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx

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

BASE = "SmolLM2-135M-Instruct"
PROJECT = "bench"
PROMPT = [{"role": "user", "content": "Write a few sentences about the sea and the ships that sail on it."}]


# --- setup ----------------------------------------------------------------------------


def make_adapter(out: Path, model_cache: Path) -> None:
    """A rank-16 LoRA on every linear projection with random (non-zero) weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from service.core.registry import DEFAULT_BASE_MODELS
    from trainer.ml.base_model import materialize
    from trainer.ml.train import lora_targets

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(materialize(DEFAULT_BASE_MODELS[0], model_cache), dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=lora_targets(base), init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(out)


async def register(database_url: str, store_root: Path, adapter: Path, count: int) -> list[str]:
    """Store `count` copies of the adapter and register each as a fine-tuned model of PROJECT."""
    from sqlalchemy import select

    from service.core.db import make_engine, make_sessionmaker
    from service.core.ids import new_id, now
    from service.core.naming import adapter_prefix, fine_tuned_model_name
    from service.core.tables import FineTuningJob, Project
    from service.jobs.catalog import register_model

    engine = make_engine(database_url)
    names = []
    try:
        async with make_sessionmaker(engine)() as session:
            project_id = (await session.execute(select(Project.id).where(Project.name == PROJECT))).scalar_one()
            for _ in range(count):
                job = FineTuningJob(
                    id=new_id("ftjob-"), project_id=project_id, model=BASE, status="succeeded", training_file="file-bench",
                    method={"type": "supervised"}, extra_hyperparameters={}, suffix="bench", seed=0, result_files=[],
                    created_at=now(),
                )  # fmt: skip
                session.add(job)
                await session.flush()  # the job row first: the model row refers to it
                prefix = adapter_prefix(job.id, None)
                shutil.copytree(adapter, store_root / prefix)
                name = fine_tuned_model_name(job, PROJECT)
                register_model(session, job, name, "final", prefix)
                job.fine_tuned_model = name
                names.append(name)
            await session.commit()
    finally:
        await engine.dispose()
    return names


# --- measuring ------------------------------------------------------------------------


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return self.tokens / self.seconds


class StreamFailed(Exception):
    pass


async def stream_one(client: httpx.AsyncClient, url: str, model: str, max_tokens: int, run: Run) -> None:
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:  # how a failure mid-stream arrives (the status was 200 already)
                raise StreamFailed(chunk["error"].get("message", "error event"))
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                run.tokens += chunk["usage"]["completion_tokens"]
    run.latencies.append(time.perf_counter() - started)
    run.ttfts.append(first if first is not None else float("nan"))


async def throughput(client: httpx.AsyncClient, url: str, model: str, streams: int, per_stream: int, max_tokens: int) -> Run:
    run = Run()

    async def worker() -> None:
        for _ in range(per_stream):
            await stream_one(client, url, model, max_tokens, run)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(streams)))
    run.seconds = time.perf_counter() - started
    return run


async def short(client: httpx.AsyncClient, url: str, model: str) -> float:
    body = {"model": model, "messages": PROMPT, "max_tokens": 1, "temperature": 0, "ignore_eos": True}
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions", json=body)
    response.raise_for_status()
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(args: argparse.Namespace, direct: str, proxy: str, gateway: str, key: str, names: list[str]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(timeout=600, limits=limits) as d,
        httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as g,
    ):
        sides = {"direct": (d, direct), "gateway": (g, gateway)}
        tuned, cold_names = names[0], names[1:]
        out: dict[str, Any] = {}

        # Cold vs warm first: these adapters have never been seen by vLLM.
        cold, warm = [], []
        for name in cold_names:
            cold.append(await short(g, gateway, name))
            warm.append(await short(g, gateway, name))
        out["adapter_load"] = {
            "cold_s": cold,
            "warm_s": warm,
            "cold_median_s": statistics.median(cold),
            "warm_median_s": statistics.median(warm),
        }
        print(
            f"adapter cold {statistics.median(cold):.3f} s, warm {statistics.median(warm):.3f} s (median of {len(cold)})",
            flush=True,
        )

        for client, url in sides.values():  # warm-up: connections, the adapter, vLLM's first batches
            await throughput(client, url, tuned, 4, 1, 8)

        # Short answers: the same request direct, through a bare pass-through proxy
        # (bench/passthrough_proxy.py: the cost of one more process on the path, whatever
        # it does) and through the gateway, in rotating order so drift falls on all three.
        short_sides = {**sides, "proxy": (d, proxy)}
        orders = list(itertools.permutations(short_sides))
        for model, label in ((BASE, "base"), (tuned, "adapter")):
            paired: dict[str, list[float]] = {side: [] for side in short_sides}
            for i in range(args.short_requests):
                for side in orders[i % len(orders)]:
                    paired[side].append(await short(*short_sides[side], model))

            def added(side: str, over: str = "direct") -> list[float]:
                return [1000 * (a - b) for a, b in zip(paired[side], paired[over], strict=True)]

            out[f"short_{label}"] = {
                "direct_p50_ms": 1000 * statistics.median(paired["direct"]),
                "proxy_p50_ms": 1000 * statistics.median(paired["proxy"]),
                "gateway_p50_ms": 1000 * statistics.median(paired["gateway"]),
                "added_p50_ms": 1000 * (statistics.median(paired["gateway"]) - statistics.median(paired["direct"])),
                "added_paired_median_ms": statistics.median(added("gateway")),
                "proxy_added_paired_median_ms": statistics.median(added("proxy")),
                "gateway_over_proxy_paired_median_ms": statistics.median(added("gateway", "proxy")),
                "added_paired_quartiles_ms": statistics.quantiles(added("gateway"), n=4),
                "proxy_added_paired_quartiles_ms": statistics.quantiles(added("proxy"), n=4),
                "samples_ms": {side: [1000 * x for x in times] for side, times in paired.items()},
            }
            summary = {k: v for k, v in out[f"short_{label}"].items() if not isinstance(v, (list, dict))}
            print(f"short {label}: {json.dumps(summary)}", flush=True)

        if not args.rounds:
            return out
        runs: dict[str, list[Run]] = {"direct": [], "gateway": []}
        for r in range(args.rounds):
            for side in ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct"):
                run = await throughput(*sides[side], tuned, args.streams, args.per_stream, args.max_tokens)
                runs[side].append(run)
                print(f"round {r} {side}: {run.throughput:.1f} tok/s", flush=True)
        summary = {}
        for side, side_runs in runs.items():
            latencies = [x for run in side_runs for x in run.latencies]
            ttfts = [x for run in side_runs for x in run.ttfts]
            summary[side] = {
                "tokens_per_s": sum(run.tokens for run in side_runs) / sum(run.seconds for run in side_runs),
                "latency_p50_s": pct(latencies, 0.5), "latency_p99_s": pct(latencies, 0.99),
                "ttft_p50_s": pct(ttfts, 0.5), "ttft_p99_s": pct(ttfts, 0.99),
            }  # fmt: skip
        summary["ratio_throughput"] = summary["gateway"]["tokens_per_s"] / summary["direct"]["tokens_per_s"]
        summary["ratio_latency_p50"] = summary["gateway"]["latency_p50_s"] / summary["direct"]["latency_p50_s"]
        summary["ratio_ttft_p50"] = summary["gateway"]["ttft_p50_s"] / summary["direct"]["ttft_p50_s"]
        out["streams"] = {
            "concurrency": args.streams,
            "per_stream": args.per_stream,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            **summary,
        }
        return out


# --- main -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams")
    parser.add_argument("--per-stream", type=int, default=1, help="requests each stream sends, one after another")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens each streamed answer generates")
    parser.add_argument("--rounds", type=int, default=4, help="throughput runs per side, interleaved (0: latency only)")
    parser.add_argument("--short-requests", type=int, default=60, help="paired 1-token requests per model")
    parser.add_argument("--cold-adapters", type=int, default=5, help="never-loaded adapters timed cold, then warm")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    model_cache = Path.home() / ".cache" / "tailor" / "models"

    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp:
        work = Path(tmp)
        store_root = work / "objects"
        store_root.mkdir()
        database_url = f"sqlite+aiosqlite:///{work / 'tailor.db'}"
        print("writing a rank-16 adapter of SmolLM2-135M-Instruct", flush=True)
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
            }
            log = work / "inference.log"
            inference = _spawn([sys.executable, "-m", "service.cli", "inference"], log, env=clean_env(env), cwd=work)
            proxy_port = free_port()
            proxy = _spawn([sys.executable, str(REPO / "bench" / "passthrough_proxy.py"), str(proxy_port), f"127.0.0.1:{port}"],
                           work / "proxy.log")  # fmt: skip
            try:
                with running_server(env, work / "server") as server:
                    key = server.create_key(PROJECT)
                    names = asyncio.run(register(database_url, store_root, work / "adapter", 1 + args.cold_adapters))
                    direct = f"http://127.0.0.1:{port}"
                    print("waiting for vLLM", flush=True)
                    _wait_until(lambda: _healthy(direct), inference, "tailor inference", log, timeout=600)
                    proxy_url = f"http://127.0.0.1:{proxy_port}"
                    figures = asyncio.run(measure(args, direct, proxy_url, server.root_url, key, names))
            except BaseException:
                print(log_tail(log), file=sys.stderr)
                raise
            finally:
                stop_process(proxy)
                stop_process(inference, grace=30)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
