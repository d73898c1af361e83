"""The gateway's own cost per request, without vLLM's noise: the same short chat request
sent straight to a stand-in upstream and through `tailor serve` to it, in pairs.

On 2 cores vLLM's CPU build keeps both cores busy, so `serve_overhead.py`'s added latency
mixes the gateway's work with scheduling delays behind vLLM. The stand-in answers at once
from this process (an asyncio HTTP/1.1 server with keep-alive, a fixed completion), so
what differs between the two sides is only the hop through Tailor: authentication, the
model check, and relaying the request and the answer.

    .venv/bin/python bench/gateway_cost.py                  # about 30 s
    .venv/bin/python bench/gateway_cost.py --requests 2000 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx

from service.cli.devservers import free_port, private_redis, running_server

BASE = "SmolLM2-135M-Instruct"
# vLLM 0.32's body for a 1-token answer, with the nulls the gateway drops (chat/spec_shape.py).
ANSWER = json.dumps({
    "id": "chatcmpl-standin", "object": "chat.completion", "created": 0, "model": BASE,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None, "annotations": None,
                 "audio": None, "function_call": None, "tool_calls": [], "reasoning_content": None},
                 "logprobs": None, "finish_reason": "length", "stop_reason": None}],
    "service_tier": None, "system_fingerprint": None,
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13, "prompt_tokens_details": None},
    "prompt_logprobs": None, "kv_transfer_params": None,
}).encode()  # fmt: skip
BODY = {"model": BASE, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1}


async def stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request on the connection with ANSWER (HTTP/1.1, keep-alive)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)  # fmt: skip
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        writer.close()  # the peer left, or the benchmark is over


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(direct: str, gateway: str, key: str, requests: int, server_pid: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=30) as d, httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as g:
        sides = {"direct": (d, direct), "gateway": (g, gateway)}

        async def one(side: str) -> float:
            client, url = sides[side]
            started = time.perf_counter()
            response = await client.post(url + "/v1/chat/completions", json=BODY)
            response.raise_for_status()
            return time.perf_counter() - started

        for side in sides:  # warm-up: connections, the key, the first requests of each path
            for _ in range(50):
                await one(side)
        times: dict[str, list[float]] = {"direct": [], "gateway": []}
        cpu_before = cpu_seconds(server_pid)
        for i in range(requests):
            for side in ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct"):
                times[side].append(await one(side))
        server_cpu = cpu_seconds(server_pid) - cpu_before
    added = [g_ - d_ for g_, d_ in zip(times["gateway"], times["direct"], strict=True)]
    return {
        "requests": requests,
        "direct_p50_ms": 1000 * statistics.median(times["direct"]),
        "gateway_p50_ms": 1000 * statistics.median(times["gateway"]),
        "added_paired_median_ms": 1000 * statistics.median(added),
        # CPU the API process spent per relayed request (and its share of idle housekeeping).
        "gateway_cpu_ms_per_request": 1000 * server_cpu / requests,
    }


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    port = free_port()
    server = await asyncio.start_server(stand_in, "127.0.0.1", port)
    try:
        with private_redis(workdir / "redis") as redis_url:
            env = {"TAILOR_REDIS_URL": redis_url, "TAILOR_INFERENCE_URLS": json.dumps({BASE: [f"http://127.0.0.1:{port}"]})}
            with running_server(env, workdir / "api") as api:
                key = await asyncio.to_thread(api.create_key, "bench")
                return await measure(f"http://127.0.0.1:{port}", api.root_url, key, args.requests, api.pid)
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="paired requests")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
