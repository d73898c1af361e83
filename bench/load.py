"""Control-plane load on `tailor serve`: many concurrent clients listing and retrieving files,
jobs and models (and, in the mixed round, uploading small files), driven by wrk.

wrk is C and event-driven, so on a 2-core machine the load generator takes a small share of
the CPU the server needs (its CPU time is reported next to the server's). Server-side
latency comes from Tailor's access log (every request, every worker process); client-side
latency and throughput from wrk.

    .venv/bin/python bench/load.py                                  # SQLite, 1 process
    .venv/bin/python bench/load.py --db postgresql --workers 2      # PostgreSQL (TAILOR_BENCH_PG_URL)
    .venv/bin/python bench/load.py --mix mixed --json out.json

wrk comes from Debian's packages (`apt-get install wrk`). The rate limit is off
(TAILOR_RATE_LIMIT_PER_MINUTE=0): the clients share one key, which is not what a limit is for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import httpx

from service.cli.devservers import private_redis, running_server

LINE = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
ACCESS = re.compile(r'"(GET|POST|DELETE) (\S+) HTTP/[\d.]+" (\d{3}) ([\d.]+)ms')

# One request per line of the rotation: (method, path template, body kind).
READS = [
    ("GET", "/v1/files", None),
    ("GET", "/v1/files/{file}", None),
    ("GET", "/v1/fine_tuning/jobs?limit=20", None),
    ("GET", "/v1/fine_tuning/jobs/{job}", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/fine_tuning/jobs/{job}/events", None),
]
MIXED = [*READS, ("POST", "/v1/files", "file")]


def lua_script(key: str, requests: list[tuple[str, str]], upload: bytes) -> str:
    """A wrk script cycling through `requests` (method, path) with the bearer key."""
    boundary = "tailorbench"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b.jsonl"\r\n\r\n'
        + upload.decode()
        + f"\r\n--{boundary}--\r\n"
    )
    entries = ",\n".join(f"  {{{json.dumps(m)}, {json.dumps(p)}}}" for m, p in requests)
    return f"""
local requests = {{
{entries}
}}
local body = {json.dumps(body)}
local i = 0
request = function()
  i = i % #requests + 1
  local r = requests[i]
  local headers = {{["Authorization"] = "Bearer {key}"}}
  if r[1] == "POST" then
    headers["Content-Type"] = "multipart/form-data; boundary={boundary}"
    return wrk.format("POST", r[2], headers, body)
  end
  return wrk.format(r[1], r[2], headers)
end
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU of a process and its children (uvicorn's worker processes)."""
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            total += tree_cpu(int(child))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def parse_wrk(out: str) -> dict[str, float]:
    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    figures = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        figures[f"client_p{pct}_ms"] = ms(re.search(rf"\s{pct}(?:\.000)?%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    figures["socket_errors"] = sum(int(g) for g in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    figures["requests"] = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return figures


def _p99(times: list[float]) -> float:
    return sorted(times)[min(len(times) - 1, int(len(times) * 0.99))]


def server_latencies(log: Path, since: int) -> dict[str, object]:
    by_route: dict[str, list[float]] = {}
    for line in log.read_text().splitlines()[since:]:
        if m := ACCESS.search(line):
            route = re.sub(r"(file|ftjob)-[A-Za-z0-9]+", r"\1-ID", m.group(2).split("?")[0])
            by_route.setdefault(f"{m.group(1)} {route}", []).append(float(m.group(4)))
    times = [t for ts in by_route.values() for t in ts]
    if not times:
        return {}
    return {
        "server_requests": len(times),
        "server_p50_ms": statistics.median(times),
        "server_p99_ms": _p99(times),
        "server_p99_ms_by_route": {route: round(_p99(ts), 1) for route, ts in sorted(by_route.items())},
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench/load.py needs wrk: apt-get install wrk")
    with private_redis(workdir / "redis") as redis_url:
        if args.db == "postgresql":
            import asyncio

            from conftest import _pg_admin
            from sqlalchemy.engine import make_url

            server_url = os.environ.get("TAILOR_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
            name = f"tailor_bench_{uuid.uuid4().hex[:8]}"
            asyncio.run(_pg_admin(server_url, [f'CREATE DATABASE "{name}"']))
            database = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        else:
            database = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        env = {
            "TAILOR_DATABASE_URL": database,
            "TAILOR_REDIS_URL": redis_url,
            "TAILOR_RATE_LIMIT_PER_MINUTE": "0",
            # Knobs from the environment (TAILOR_MAX_CONCURRENT_REQUESTS=0 ...), not the tests' own.
            **{k: v for k, v in os.environ.items() if k.startswith("TAILOR_") and not k.startswith("TAILOR_TEST_")},
            "TAILOR_SERVE_WORKERS": str(args.workers),
        }
        try:
            with running_server(env, workdir / "api") as api:
                key = api.create_key("bench")
                with httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
                    files = [
                        http.post("/files", files={"file": (f"f{i}.jsonl", LINE * 10)}, data={"purpose": "fine-tune"}).json()[
                            "id"
                        ]
                        for i in range(20)
                    ]
                    jobs = [
                        http.post("/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "training_file": f}).json()["id"]
                        for f in files[:10]
                    ]
                mix = MIXED if args.mix == "mixed" else READS
                rotation = [
                    (m, p.format(file=files[i % len(files)], job=jobs[i % len(jobs)]))
                    for i in range(60)
                    for m, p, _ in [mix[i % len(mix)]]
                ]
                script = workdir / "load.lua"
                script.write_text(lua_script(key, rotation, LINE * 5))
                url = api.root_url
                # Warm up (imports, caches, connection pools), then measure.
                subprocess.run([wrk, "-t2", "-c20", "-d3s", "-s", str(script), url], capture_output=True, check=True)
                log_lines = len(api.log_path.read_text().splitlines())
                server_cpu = tree_cpu(api.pid)
                started = time.monotonic()
                proc = subprocess.Popen(
                    [wrk, "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "--timeout", "30s",
                     "-s", str(script), url],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                wrk_cpu = 0.0
                while proc.poll() is None:
                    try:
                        wrk_cpu = cpu_seconds(proc.pid)
                    except FileNotFoundError:
                        break
                    time.sleep(0.5)
                out = proc.communicate()[0]
                wall = time.monotonic() - started
                server_cpu = tree_cpu(api.pid) - server_cpu
                time.sleep(1)  # the last access lines are written after their answers
                figures: dict[str, object] = {
                    "db": args.db,
                    "workers": args.workers,
                    "mix": args.mix,
                    "connections": args.connections,
                    "duration_s": args.duration,
                    **parse_wrk(out),
                    **server_latencies(api.log_path, log_lines),
                    "server_cpu_s_per_s": round(server_cpu / wall, 2),
                    "client_cpu_s_per_s": round(wrk_cpu / wall, 2),
                }
                return figures
        finally:
            if args.db == "postgresql":
                asyncio.run(_pg_admin(server_url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--workers", type=int, default=1, help="tailor serve processes (TAILOR_SERVE_WORKERS)")
    parser.add_argument("--mix", choices=["reads", "mixed"], default="reads")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tailor-load-") as tmp:
        figures = run(args, Path(tmp))
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
