"""`tailor serve --workers N`: N processes share the port, migrations run once before them,
and each serves the API (bench/load.py measures what it buys)."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
from conftest import running_server


def test_two_processes_serve_one_port(redis_url: str, queue_name: str, tmp_path: Path) -> None:
    env = {
        "TAILOR_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
        "TAILOR_REDIS_URL": redis_url,
        "TAILOR_QUEUE_NAME": f"{queue_name}:workers",
        "TAILOR_SERVE_WORKERS": "2",
    }
    with running_server(env, tmp_path / "data") as server:
        children = [p for p in psutil.Process(server.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(children) == 2, [p.cmdline() for p in psutil.Process(server.pid).children()]
        key = server.create_key("workers")
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            made = http.post("/files", files={"file": ("a.jsonl", b'{"a": 1}\n')}, data={"purpose": "batch"})
            assert made.status_code == 200, made.text
            # New connections land on either process; every one sees the same database.
            for _ in range(20):
                with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as fresh:
                    assert [f["id"] for f in fresh.get("/files").json()["data"]] == [made.json()["id"]]
        lines = server.log_path.read_text()
        assert lines.count("Started server process") == 2, "one line per process"
