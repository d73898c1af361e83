"""The dashboard's jobs page with 200 jobs: page weight and time to first render, measured in
Debian's headless chromium through Playwright against a real `tailor serve` (SQLite, a
private Redis, no worker: the jobs stay queued).

Each round opens a fresh browser context (empty cache, as a first visit) on `/#/jobs` with
the key already in session storage, and reads the time from navigation start to the page's
`tailor:jobs-rendered` mark (set once the table of every job is in the DOM), plus the bytes
of every response (the resource-timing entries' encoded body sizes: what crossed the wire).

    .venv/bin/python bench/dashboard_render.py              # 200 jobs, 7 rounds
    .venv/bin/python bench/dashboard_render.py --jobs 1000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx

from service.cli.devservers import private_redis, running_server

LINE = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'

MEASURE = """() => {
  const mark = performance.getEntriesByName("tailor:jobs-rendered")[0];
  const nav = performance.getEntriesByType("navigation")[0];
  const resources = performance.getEntriesByType("resource");
  const kind = (r) => (r.name.includes("/v1/") ? "api" : "static");
  const bytes = {static: nav.encodedBodySize, api: 0};
  const count = {static: 1, api: 0};
  for (const r of resources) { bytes[kind(r)] += r.encodedBodySize; count[kind(r)] += 1; }
  return {render_ms: mark.startTime, dom_content_loaded_ms: nav.domContentLoadedEventEnd, bytes, count,
          rows: document.querySelectorAll("tbody tr").length};
}"""


def seed(root_url: str, key: str, jobs: int) -> None:
    with httpx.Client(base_url=root_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        file_id = http.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", LINE * 20)}).json()["id"]
        for i in range(jobs):
            answer = http.post(
                "/v1/fine_tuning/jobs",
                json={"model": "SmolLM2-135M-Instruct", "training_file": file_id, "suffix": f"bench-{i}"},
            )
            answer.raise_for_status()


def measure(root_url: str, key: str, rounds: int, jobs: int) -> list[dict[str, object]]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("chromium is not on PATH (make setup installs Debian's)")
    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            for _ in range(rounds):
                context = browser.new_context(base_url=root_url, viewport={"width": 1280, "height": 860})
                context.add_init_script(f"sessionStorage.setItem('tailor.api_key', {json.dumps(key)});")
                page = context.new_page()
                page.goto("/#/jobs")
                # Polled from here: wait_for_function would evaluate its predicate with eval in
                # the page, which the dashboard's CSP (no 'unsafe-eval') rightly refuses.
                deadline = time.monotonic() + 60
                while not page.evaluate("performance.getEntriesByName('tailor:jobs-rendered').length > 0"):
                    assert time.monotonic() < deadline, "the jobs page did not render in 60 s"
                    time.sleep(0.05)
                page.wait_for_load_state("networkidle")
                result = page.evaluate(MEASURE)
                assert result["rows"] == jobs, result
                results.append(result)
                context.close()
        finally:
            browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tailor-bench-dash-") as tmp:
        root = Path(tmp)
        with private_redis(root / "redis") as redis_url:
            env = {
                "TAILOR_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'bench.db'}",
                "TAILOR_REDIS_URL": redis_url,
                "TAILOR_QUEUE_NAME": "tailor:bench-dashboard",
                "TAILOR_RATE_LIMIT_PER_MINUTE": "0",
            }
            with running_server(env, root / "server") as server:
                key = server.create_key("bench")
                started = time.monotonic()
                seed(server.root_url, key, args.jobs)
                print(f"seeded {args.jobs} jobs in {time.monotonic() - started:.1f} s", flush=True)
                results = measure(server.root_url, key, args.rounds, args.jobs)
    renders = [float(r["render_ms"]) for r in results]  # type: ignore[arg-type]
    first = results[0]
    summary = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "render_ms_median": round(statistics.median(renders), 1),
        "render_ms_min": round(min(renders), 1),
        "render_ms_max": round(max(renders), 1),
        "static_kb": round(first["bytes"]["static"] / 1024, 1),  # type: ignore[index]
        "api_kb": round(first["bytes"]["api"] / 1024, 1),  # type: ignore[index]
        "requests": first["count"],
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rounds": results}, indent=2))


if __name__ == "__main__":
    main()
