"""A small cluster on this machine: one API, two workers on two queues (worker pools),
PostgreSQL (in CI) or SQLite, Redis and an S3 endpoint (moto on loopback).

Each base model's needs pick its pool; two jobs, one per pool, train at the same time on
their own workers and both succeed; /metrics shows the queue depths and job counts. The
workers train on CPU here: what is tested is the routing, not the GPUs a pool claims.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import fresh_database_url
from tiny_model import WORDS, build_tiny_llama

from service.cli.devservers import TailorWorker, running_server

pytestmark = pytest.mark.slow

SMALL, BIG = "tiny-small", "tiny-big"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str, s3_endpoint: tuple[str, str]) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cluster")
    model_dir = build_tiny_llama(root / "tiny-llama", hidden=64, layers=2)
    prefix = f"tailor:test-cluster:{uuid.uuid4().hex[:8]}"
    pools = [
        {"queue": f"{prefix}:cpu", "gpu_memory_gb": 0, "gpu_count": 0},
        {"queue": f"{prefix}:gpu40", "gpu_memory_gb": 40, "gpu_count": 1},
    ]
    models_file = root / "models.json"
    common = {"source": "hf_dir", "location": str(model_dir), "context_length": 256}
    models_file.write_text(json.dumps([
        {"name": SMALL, **common},
        {"name": BIG, "gpu_memory_gb": 24, "gpu_count": 1, **common},
        {"name": "tiny-huge", "gpu_memory_gb": 80, "gpu_count": 8, **common},
    ]))  # fmt: skip
    endpoint, bucket = s3_endpoint
    with fresh_database_url(root / "db") as db_url:
        env = {
            "TAILOR_DATABASE_URL": db_url,
            "TAILOR_REDIS_URL": redis_url,
            "TAILOR_QUEUE_NAME": f"{prefix}:default",
            "TAILOR_WORKER_POOLS": json.dumps(pools),
            "TAILOR_STORAGE_URL": f"s3://{bucket}/cluster-{uuid.uuid4().hex[:8]}",
            "TAILOR_S3_ENDPOINT_URL": endpoint,
            "TAILOR_BASE_MODELS_FILE": str(models_file),
            "TAILOR_DEVICE": "cpu",
        }
        with running_server(env, root / "api") as server:
            client = openai.OpenAI(base_url=server.base_url, api_key=server.create_key("cluster"), max_retries=0)
            try:
                yield {"server": server, "client": client, "env": env, "root": root, "pools": pools}
            finally:
                client.close()


def _file(n: int) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": " ".join(WORDS[i % 9 : i % 9 + 3])},
                      {"role": "assistant", "content": "the capital of france is paris"}]}
        for i in range(n)
    ]  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition."""
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no sample {name}{labels} in /metrics:\n{text}")


def _wait(check: Any, timeout: float, what: str, workers: list[TailorWorker]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.3)
    logs = "\n".join(f"--- {w.log_path}\n{w.log_tail()}" for w in workers)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def test_a_model_no_pool_can_train_is_refused(cluster: dict[str, Any]) -> None:
    client = cluster["client"]
    training_file = client.files.create(file=("t.jsonl", _file(10)), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.create(model="tiny-huge", training_file=training_file)
    assert exc.value.body["param"] == "model"
    assert "No worker pool can train 'tiny-huge'" in exc.value.body["message"]


def test_two_jobs_run_at_once_each_on_its_pool(cluster: dict[str, Any]) -> None:
    client, server, pools = cluster["client"], cluster["server"], cluster["pools"]
    training_file = client.files.create(file=("t.jsonl", _file(40)), purpose="fine-tune").id
    hyper = {"n_epochs": 12, "batch_size": 1}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    small = client.fine_tuning.jobs.create(model=SMALL, training_file=training_file, method=method)
    big = client.fine_tuning.jobs.create(model=BIG, training_file=training_file, method=method)

    # No worker runs yet: each job waits on its own pool's queue.
    scrape = httpx.get(f"{server.root_url}/metrics", timeout=10).text
    assert _metric(scrape, "tailor_queue_depth", queue=pools[0]["queue"]) == 1
    assert _metric(scrape, "tailor_queue_depth", queue=pools[1]["queue"]) == 1
    assert _metric(scrape, "tailor_queue_depth", queue=cluster["env"]["TAILOR_QUEUE_NAME"]) == 0
    assert _metric(scrape, "tailor_jobs", status="validating_files") == 2

    workers = [
        TailorWorker(cluster["env"], cluster["root"] / "worker-cpu", "worker-cpu", "--queue", pools[0]["queue"]),
        TailorWorker(cluster["env"], cluster["root"] / "worker-gpu40", "worker-gpu40", "--queue", pools[1]["queue"]),
    ]
    try:

        def statuses() -> list[str]:
            return [client.fine_tuning.jobs.retrieve(j.id).status for j in (small, big)]

        def both_running_or_one_done() -> list[str] | None:
            now = statuses()
            return now if now == ["running", "running"] or "succeeded" in now else None

        def both_ended() -> list[str] | None:
            now = statuses()
            return now if all(x in ("succeeded", "failed", "cancelled") for x in now) else None

        seen = _wait(both_running_or_one_done, 180, "both jobs to run", workers)
        assert seen == ["running", "running"], f"the jobs did not overlap: {seen}"
        done = _wait(both_ended, 600, "both jobs to end", workers)
        assert done == ["succeeded", "succeeded"], [client.fine_tuning.jobs.retrieve(j.id).error for j in (small, big)]
        # Each worker took its own pool's job, and only that one. The worker writes its
        # "job …: succeeded" line once the job has returned, a moment after the API shows it.
        for worker, mine, other in ((workers[0], small, big), (workers[1], big, small)):

            def logged_outcome(w: TailorWorker = worker, job_id: str = mine.id) -> str | None:
                text = w.log_path.read_text()
                return text if f"job {job_id}: succeeded" in text else None

            log = _wait(logged_outcome, 30, f"{worker.log_path.name} to log its job's outcome", workers)
            assert other.id not in log, worker.log_tail()
    finally:
        for worker in workers:
            worker.stop()

    scrape = httpx.get(f"{server.root_url}/metrics", timeout=10).text
    assert _metric(scrape, "tailor_jobs", status="succeeded") == 2
    assert _metric(scrape, "tailor_queue_depth", queue=pools[0]["queue"]) == 0
    assert _metric(scrape, "tailor_queue_depth", queue=pools[1]["queue"]) == 0
