"""schemathesis against a real `tailor serve` on PostgreSQL and on SQLite (issue 15): every
check it has, with a fixed seed and a bounded budget, must pass: no 5xx, every status and
body as openapi/openapi.yaml documents it, schema-violating requests refused, the bearer
key required.

One check is left out: `positive_data_acceptance` expects every request the schema allows
to succeed, and Tailor rightly refuses some beyond what a schema can say: a file that is not
JSONL, a job on a file still uploading, a cancelled Upload that gets a part, a size over a
configured limit. Those answers are 4xx in the envelope, which the other checks verify.

Real objects (a job, an upload) are created first and their ids given to schemathesis, so
operations on one object reach its logic instead of only 404s.

The two chat routes are left out: without vLLM they answer 503, and their bodies are
vLLM's, checked against the official schemas on a real vLLM in tests/test_inference_vllm.py
(their own input checks are in tests/test_bad_input.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import TailorServer, fresh_database_url, running_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "openapi" / "openapi.yaml"
SEED = 7
EXAMPLES = 100
LINE = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'


def _queues(redis_url: str, queue_name: str) -> dict[str, str]:
    # No eval worker runs here: graders/run gives up after a second (503 in the envelope).
    return {
        "TAILOR_REDIS_URL": redis_url,
        "TAILOR_QUEUE_NAME": f"{queue_name}:fuzz",
        "TAILOR_EVAL_QUEUE_NAME": f"{queue_name}:fuzz-evals",
        "TAILOR_GRADER_RUN_TIMEOUT_SECONDS": "1",
    }


@pytest.fixture(params=["postgresql", "sqlite"])
def fuzzed_server(request: pytest.FixtureRequest, redis_url: str, queue_name: str, tmp_path: Path) -> Iterator[TailorServer]:
    if request.param == "postgresql" and not os.environ.get("TAILOR_TEST_DATABASE_URL"):
        pytest.skip("set TAILOR_TEST_DATABASE_URL to a PostgreSQL server (CI does)")
    if request.param == "sqlite":
        database = f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}"
        env = {"TAILOR_DATABASE_URL": database, **_queues(redis_url, queue_name)}
        with running_server(env, tmp_path / "data") as server:
            yield server
        return
    with fresh_database_url() as database:
        env = {"TAILOR_DATABASE_URL": database, **_queues(redis_url, queue_name)}
        with running_server(env, tmp_path / "data") as server:
            yield server


def real_objects(server: TailorServer, key: str) -> dict[str, str]:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        file_id = http.post("/files", files={"file": ("t.jsonl", LINE * 10)}, data={"purpose": "fine-tune"}).json()["id"]
        job = http.post("/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "training_file": file_id}).json()
        upload = {"filename": "u.jsonl", "purpose": "fine-tune", "bytes": len(LINE), "mime_type": "text/jsonl"}
        upload_id = http.post("/uploads", json=upload).json()["id"]
        schema = {"type": "object", "properties": {"q": {"type": "string"}}}
        check = {"type": "string_check", "name": "q", "input": "{{item.q}}", "reference": "a", "operation": "eq"}
        ev = http.post(
            "/evals", json={"data_source_config": {"type": "custom", "item_schema": schema}, "testing_criteria": [check]}
        )
        content = {"type": "file_content", "content": [{"item": {"q": "a"}}]}
        run = http.post(f"/evals/{ev.json()['id']}/runs", json={"data_source": {"type": "jsonl", "source": content}})
    # No file id: schemathesis follows POST /v1/files to the file's own routes by itself, and
    # a fixed id would override those links.
    return {
        "path.fine_tuning_job_id": job["id"],
        "path.upload_id": upload_id,
        "path.eval_id": ev.json()["id"],
        "path.run_id": run.json()["id"],
    }


def test_schemathesis_finds_nothing(fuzzed_server: TailorServer, tmp_path: Path) -> None:
    key = fuzzed_server.create_key("fuzz")
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[parameters]\n" + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in real_objects(fuzzed_server, key).items())
    )
    command = [
        str(Path(sys.executable).parent / "st"), "--config-file", str(config),
        "run", str(DOC), "--url", fuzzed_server.root_url, "-H", f"Authorization: Bearer {key}",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--exclude-path-regex", "^/v1/(chat/)?completions$",
        "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
        "--generation-allow-x00", "true", "--no-color",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, cwd=tmp_path)
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    assert result.returncode == 0, f"{result.stdout[-12000:]}\n{result.stderr[-3000:]}\n{fuzzed_server.log_tail(15)}"
    assert "passed" in summary and "failures" not in summary, summary
    print(summary)  # the figures for the closing note (pytest -s)
