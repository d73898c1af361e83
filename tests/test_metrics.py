"""Observability: the API's /metrics and /ready against a real `tailor serve`, Redis and
database; JSON logs with request ids; a worker's metrics server (in-process and from a real
`tailor worker`); the vLLM plugin's adapter cache counters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from conftest import running_server
from helpers_db import redis_client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from spec import assert_error_envelope
from tiny_model import WORDS, build_tiny_llama

from service.api.metrics import queue_names
from service.cli.devservers import TailorWorker, free_port
from service.core.logs import JsonFormatter, request_state_var
from service.core.settings import Settings
from service.core.tables import FineTuningJob
from trainer.metrics import WorkerMetrics, serve_worker_metrics
from trainer.outcome import Outcome
from trainer.recorder import Recorder

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "inference" / "vllm_plugin"
sys.path.insert(0, str(PLUGIN_DIR))

from tailor_vllm_plugin.cache import AdapterCache  # noqa: E402

BASE = "SmolLM2-135M-Instruct"
TINY = "tiny-llama"
TRAIN_BYTES = "".join(
    json.dumps({"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"Arr, {i}!"}]}) + "\n"
    for i in range(5)
).encode()
DURATION = "tailor_http_request_duration_seconds"


# --- helpers ---------------------------------------------------------------------------


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text exposition, as (name, labels, value)."""
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value; 0 when the exposition has no such sample (a counter never incremented)."""
    found = [v for n, lab, v in samples(text) if n == name and lab == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def scrape(root_url: str) -> str:
    response = httpx.get(f"{root_url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return response.text


def wait_for(check: Any, timeout: float, what: str, logs: list[Any]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    tails = "\n".join(f"--- {p.log_path}\n{p.log_tail()}" for p in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every whole line of a log file (one being written is left out), each of which must be
    one JSON object with the four fields."""
    out = []
    for line in path.read_text().split("\n")[:-1]:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}: a log line that is not JSON: {line!r}") from None
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record), line
        out.append(record)
    return out


# --- the API's /metrics ----------------------------------------------------------------


def test_requests_are_timed_by_route_template_never_by_raw_path(
    client_a: openai.OpenAI, http_a: httpx.Client, server: Any
) -> None:
    file_id = client_a.files.create(file=("m.jsonl", TRAIN_BYTES), purpose="fine-tune").id  # type: ignore[arg-type]
    missing = f"file-{uuid.uuid4().hex}"
    unknown = f"/v1/no-such-thing-{uuid.uuid4().hex}"
    before = scrape(server.root_url)
    assert http_a.get(f"/v1/files/{file_id}").status_code == 200
    assert http_a.get(f"/v1/files/{missing}").status_code == 404
    assert http_a.get(unknown).status_code == 404
    after = scrape(server.root_url)

    route = "/v1/files/{file_id}"
    count = f"{DURATION}_count"
    assert (
        value(after, count, method="GET", route=route, status="200")
        == value(before, count, method="GET", route=route, status="200") + 1
    )
    assert (
        value(after, count, method="GET", route=route, status="404")
        == value(before, count, method="GET", route=route, status="404") + 1
    )
    assert value(after, count, method="POST", route="/v1/files", status="200") >= 1
    assert value(after, count, method="GET", route="unmatched", status="404") >= 1
    bucket = value(after, f"{DURATION}_bucket", method="GET", route=route, status="200", le="+Inf")
    assert bucket == value(after, count, method="GET", route=route, status="200")
    for raw in (file_id, missing, unknown):
        assert raw not in after, f"{raw} leaked into the metrics"
    assert value(after, "process_resident_memory_bytes") > 0


def test_queue_depth_and_job_counts_are_read_at_scrape_time(
    client_a: openai.OpenAI, server: Any, redis_url: str, queue_name: str
) -> None:
    training_file = client_a.files.create(file=("q.jsonl", TRAIN_BYTES), purpose="fine-tune").id  # type: ignore[arg-type]
    before = scrape(server.root_url)
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file)
    assert job.status == "validating_files"
    after = scrape(server.root_url)

    with redis_client(redis_url) as redis:
        depth = redis.zcard(queue_name)
    assert depth >= 1
    assert value(after, "tailor_queue_depth", queue=queue_name) == depth  # no worker runs: the job waits there
    assert value(after, "tailor_queue_depth", queue=queue_name) == value(before, "tailor_queue_depth", queue=queue_name) + 1
    grew = value(after, "tailor_jobs", status="validating_files") - value(before, "tailor_jobs", status="validating_files")
    assert grew == 1
    # Every status is reported, a count of 0 included.
    assert {lab["status"] for n, lab, _ in samples(after) if n == "tailor_jobs"} >= {
        "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
    }  # fmt: skip
    assert value(after, "tailor_dependency_up", dependency="database") == 1
    assert value(after, "tailor_dependency_up", dependency="redis") == 1

    client_a.fine_tuning.jobs.cancel(job.id)
    counts = scrape(server.root_url)
    assert value(counts, "tailor_jobs", status="cancelled") == value(after, "tailor_jobs", status="cancelled") + 1


def test_every_queue_a_job_may_wait_on_is_reported() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, queue_name="q:default", worker_pools=[{"queue": "q:gpu"}, {"queue": "q:default"}]
    )
    models = {"a": SimpleNamespace(queue="q:special"), "b": SimpleNamespace(queue=None)}
    assert queue_names(settings, models) == ["q:default", "q:gpu", "q:special"]


# --- /ready ----------------------------------------------------------------------------


def test_ready_when_database_and_redis_answer(server: Any) -> None:
    response = httpx.get(f"{server.root_url}/ready", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready"}


def test_not_ready_when_redis_and_the_database_are_away(server_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **server_env,
        "TAILOR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "TAILOR_DATABASE_URL": f"postgresql+asyncpg://tailor@127.0.0.1:{free_port()}/tailor",
        "TAILOR_MIGRATE_ON_START": "false",
    }
    with running_server(env, tmp_path / "down") as down:
        assert httpx.get(f"{down.root_url}/health", timeout=10).status_code == 200  # alive, no I/O
        response = httpx.get(f"{down.root_url}/ready", timeout=30)
        err = assert_error_envelope(response, 503)
        assert err["code"] == "service_unavailable" and err["type"] == "server_error", err
        assert "Redis did not answer" in err["message"] and "the database did not answer" in err["message"], err
        assert response.headers.get("x-request-id")
        text = scrape(down.root_url)  # a scrape still answers, and says what is down
        assert value(text, "tailor_dependency_up", dependency="redis") == 0
        assert value(text, "tailor_dependency_up", dependency="database") == 0
        assert not [s for s in samples(text) if s[0] == "tailor_queue_depth"]


# --- JSON logs and a real worker's metrics ----------------------------------------------


@pytest.fixture(scope="module")
def json_stack(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server logging JSON, on a queue of its own (a worker of it takes nobody else's jobs)."""
    root = tmp_path_factory.mktemp("json-stack")
    storage = (root / "objects").resolve()
    storage.mkdir()
    model_dir = build_tiny_llama(root / "tiny-llama", hidden=32, layers=1)
    models_file = root / "models.json"
    models_file.write_text(json.dumps([{"name": TINY, "source": "hf_dir", "location": str(model_dir), "context_length": 256}]))
    env = {
        **server_env,
        "TAILOR_QUEUE_NAME": f"tailor:test-metrics:{uuid.uuid4().hex[:8]}",
        "TAILOR_STORAGE_URL": storage.as_uri(),
        "TAILOR_BASE_MODELS_FILE": str(models_file),
        "TAILOR_DEVICE": "cpu",
        "TAILOR_LOG_FORMAT": "json",
    }
    with running_server(env, root / "api") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.create_key("metrics"), max_retries=0)
        try:
            yield {"server": server, "client": client, "env": env, "root": root}
        finally:
            client.close()


def test_json_log_lines_carry_the_request_id(json_stack: dict[str, Any]) -> None:
    server = json_stack["server"]
    request_id = f"req_test_{uuid.uuid4().hex}"
    response = httpx.get(f"{server.root_url}/v1/models", headers={"x-request-id": request_id, "Authorization": "Bearer sk-wrong"})
    assert response.status_code == 401 and response.headers["x-request-id"] == request_id

    def logged() -> list[dict[str, Any]]:
        return [r for r in json_lines(server.log_path) if r.get("request_id") == request_id]

    mine = wait_for(logged, 10, "the request's log line", [server])
    # The access line: written by Tailor after the response, with the status and duration.
    assert any(
        r["logger"] == "tailor.access" and '"GET /v1/models HTTP/1.1" 401 ' in r["message"] and r["message"].endswith("ms")
        for r in mine
    ), mine
    records = json_lines(server.log_path)  # every line, uvicorn's start-up lines included, is JSON
    assert any(r["logger"].startswith("uvicorn") and "request_id" not in r for r in records), records[:5]


@pytest.mark.slow
def test_a_real_worker_serves_its_job_outcomes_and_trained_tokens(json_stack: dict[str, Any]) -> None:
    client, server = json_stack["client"], json_stack["server"]
    doomed_file = client.files.create(file=("w.jsonl", TRAIN_BYTES), purpose="fine-tune").id  # type: ignore[arg-type]
    doomed = client.fine_tuning.jobs.create(model=TINY, training_file=doomed_file)
    client.files.delete(doomed_file)  # the worker fails this job before any training starts
    rows = [{"messages": [{"role": "user", "content": " ".join(WORDS[i : i + 3])}, {"role": "assistant", "content": "paris"}]}
            for i in range(10)]  # fmt: skip
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    good_file = client.files.create(file=("t.jsonl", data), purpose="fine-tune").id  # type: ignore[arg-type]
    hyperparameters = {"n_epochs": 1, "batch_size": 5}
    good = client.fine_tuning.jobs.create(
        model=TINY, training_file=good_file, method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    )
    port = free_port()
    worker = TailorWorker({**json_stack["env"], "TAILOR_WORKER_METRICS_PORT": str(port)}, json_stack["root"] / "worker")
    try:
        ended = lambda: all(client.fine_tuning.jobs.retrieve(j.id).status in ("succeeded", "failed") for j in (doomed, good))  # noqa: E731
        wait_for(ended, 300, "the worker to end both jobs", [worker, server])
        # The row changes first, then the run ends and is counted, then the worker logs it.
        logged = lambda: all(any(f"job {j.id}: " in r["message"] for r in json_lines(worker.log_path)) for j in (doomed, good))  # noqa: E731
        wait_for(logged, 30, "the worker to log both outcomes", [worker])
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        worker.stop()
    assert client.fine_tuning.jobs.retrieve(doomed.id).status == "failed"
    done = client.fine_tuning.jobs.retrieve(good.id)
    assert done.status == "succeeded", (done.error, worker.log_tail())
    assert value(text, "tailor_worker_jobs_total", method="supervised", outcome="failed") == 1
    assert value(text, "tailor_worker_jobs_total", method="supervised", outcome="succeeded") == 1
    assert value(text, "tailor_worker_job_duration_seconds_count", method="supervised", outcome="succeeded") == 1
    assert value(text, "tailor_worker_jobs_in_progress") == 0
    assert value(text, "tailor_worker_trained_tokens_total", method="supervised") == done.trained_tokens > 0
    assert value(text, "tailor_worker_training_tokens_per_second") == 0  # nothing trains now
    json_lines(worker.log_path)  # every line is JSON, the training child's included


# --- worker metrics, in-process ---------------------------------------------------------


@pytest.mark.parametrize(
    "outcome, label",
    [
        (Outcome.SUCCEEDED, "succeeded"), (Outcome.FAILED, "failed"), (Outcome.CANCELLED, "cancelled"),
        (Outcome.PAUSED, "paused"), (Outcome.LEASE_LOST, "lease_lost"), (Outcome.of_status("cancelled"), "cancelled"),
        (Outcome.of_status("paused"), "paused"), (Outcome.STOPPED, "stopped"), (Outcome.of_status("running"), "stopped"),
        (Outcome.ERROR, "error"),
    ],
)  # fmt: skip
def test_outcome_labels(outcome: Outcome, label: str) -> None:
    assert outcome.value == label


@pytest.fixture
def served_worker_metrics() -> Iterator[tuple[WorkerMetrics, str]]:
    metrics = WorkerMetrics()
    port = free_port()
    server = serve_worker_metrics(port, "127.0.0.1", metrics)
    try:
        yield metrics, f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def test_worker_metrics_server_shows_outcomes_and_throughput(served_worker_metrics: tuple[WorkerMetrics, str]) -> None:
    metrics, url = served_worker_metrics
    metrics.job_started()
    metrics.job_started()
    metrics.step("ftjob-a", "supervised", 100, None)
    metrics.step("ftjob-a", "supervised", 50, 0.5)
    metrics.step("ftjob-b", "dpo", 30, 1.0)
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert value(text, "tailor_worker_jobs_in_progress") == 2
    assert value(text, "tailor_worker_trained_tokens_total", method="supervised") == 150
    assert value(text, "tailor_worker_training_tokens_per_second") == pytest.approx(130)

    metrics.job_finished("ftjob-a", "supervised", Outcome.LEASE_LOST, 42.0)
    metrics.job_finished("ftjob-b", "dpo", Outcome.FAILED, 3.0)
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert value(text, "tailor_worker_jobs_total", method="supervised", outcome="lease_lost") == 1
    assert value(text, "tailor_worker_jobs_total", method="dpo", outcome="failed") == 1
    assert value(text, "tailor_worker_job_duration_seconds_sum", method="supervised", outcome="lease_lost") == 42.0
    assert value(text, "tailor_worker_jobs_in_progress") == 0
    assert value(text, "tailor_worker_training_tokens_per_second") == 0

    assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
    assert httpx.get(f"{url}/elsewhere", timeout=10).status_code == 404


def test_recorder_counts_only_new_tokens() -> None:
    metrics = WorkerMetrics()
    job = FineTuningJob(id="ftjob-x", method={"type": "dpo", "dpo": {"hyperparameters": {}}})
    fresh = Recorder(SimpleNamespace(metrics=metrics), "ftjob-x")  # type: ignore[arg-type]
    fresh._count_tokens(job, 1, 120)
    fresh._count_tokens(job, 2, 300)
    assert metrics.registry.get_sample_value("tailor_worker_trained_tokens_total", {"method": "dpo"}) == 300
    assert (metrics.registry.get_sample_value("tailor_worker_training_tokens_per_second") or 0) > 0
    resumed = Recorder(SimpleNamespace(metrics=metrics), "ftjob-x")  # type: ignore[arg-type]
    resumed._count_tokens(job, 7, 900)  # from a checkpoint: its earlier tokens were counted by the first run
    resumed._count_tokens(job, 8, 1000)
    assert metrics.registry.get_sample_value("tailor_worker_trained_tokens_total", {"method": "dpo"}) == 400


# --- JSON formatter -------------------------------------------------------------------


def test_json_formatter_fields() -> None:
    record = logging.LogRecord("tailor.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    token = request_state_var.set({"request_id": "req_abc"})
    try:
        inside = json.loads(JsonFormatter().format(record))
    finally:
        request_state_var.reset(token)
    assert inside["message"] == "hello world" and inside["level"] == "WARNING" and inside["logger"] == "tailor.test"
    assert inside["request_id"] == "req_abc" and inside["time"].endswith("+00:00")
    outside = json.loads(JsonFormatter().format(record))
    assert "request_id" not in outside
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]


def test_log_lines_inside_a_request_carry_its_id_crashes_included() -> None:
    from fastapi import FastAPI

    from service.api.errors import install_error_handlers
    from service.api.metrics import ApiMetrics
    from service.api.middleware import RequestMiddleware

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestMiddleware, metrics=ApiMetrics())
    app_log = logging.getLogger("tailor.test.handler")

    @app.get("/work")
    async def work() -> dict[str, str]:
        app_log.warning("working")
        return {}

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("boom")

    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(JsonFormatter().format(record)))

    async def go() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert (await c.get("/work", headers={"x-request-id": "req_work"})).status_code == 200
            assert (await c.get("/crash", headers={"x-request-id": "req_crash"})).status_code == 500
        logging.getLogger("tailor.test.handler").warning("after the requests")

    handler = Collect()
    for name in ("tailor.test.handler", "tailor.errors"):
        logging.getLogger(name).addHandler(handler)
    try:
        asyncio.run(go())
    finally:
        for name in ("tailor.test.handler", "tailor.errors"):
            logging.getLogger(name).removeHandler(handler)
    by_message = {line["message"].split("\n")[0]: line for line in lines}
    assert by_message["working"]["request_id"] == "req_work"
    assert by_message["unhandled error in request req_crash"]["request_id"] == "req_crash"
    assert "request_id" not in by_message["after the requests"]


# --- the vLLM plugin's adapter cache -----------------------------------------------------


def _download(size: int) -> Any:
    def download(directory: Path) -> int:
        (directory / "adapter_config.json").write_text("{}")
        (directory / "adapter_model.safetensors").write_bytes(b"x" * size)
        return size

    return download


def _counts() -> dict[str, float]:
    return {k: REGISTRY.get_sample_value(f"tailor_adapter_cache_{k}_total") or 0.0 for k in ("hits", "misses", "evictions")}


def test_adapter_cache_counts_hits_misses_and_evictions(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path, max_bytes=1_500, grace_seconds=0)
    start = _counts()

    def delta() -> dict[str, float]:
        now = _counts()
        return {k: now[k] - start[k] for k in now}

    cache.fetch("ft:a", _download(1000))
    assert delta() == {"hits": 0, "misses": 1, "evictions": 0}
    cache.fetch("ft:a", _download(1000))
    assert delta() == {"hits": 1, "misses": 1, "evictions": 0}
    then = time.time() - 60
    os.utime(cache.get("ft:a") / ".tailor-adapter.json", (then, then))  # type: ignore[operator]
    cache.fetch("ft:b", _download(1000))

    async def unload(name: str) -> None:
        pass

    assert asyncio.run(cache.make_room(keep={"ft:b"}, unload=unload)) == ["ft:a"]
    assert delta() == {"hits": 1, "misses": 2, "evictions": 1}
    assert cache.evict("ft:b") and not cache.evict("ft:b")  # a second evict finds nothing: not counted
    assert delta() == {"hits": 1, "misses": 2, "evictions": 2}


PLUGIN_SCRIPT = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, {plugin!r})
{block}
from tailor_vllm_plugin.cache import AdapterCache
cache = AdapterCache(Path(tempfile.mkdtemp()), max_bytes=10_000)
def download(d):
    (d / "adapter_config.json").write_text("{{}}")
    return 2
cache.fetch("ft:a", download); cache.fetch("ft:a", download); assert cache.evict("ft:a")
{report}
"""


def _run_plugin_script(block: str, report: str, env: dict[str, str]) -> str:
    code = PLUGIN_SCRIPT.format(plugin=str(PLUGIN_DIR), block=block, report=report)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_adapter_cache_works_without_prometheus_client() -> None:
    out = _run_plugin_script(
        "sys.modules['prometheus_client'] = None  # as if it were not installed",
        "print('ok', 'prometheus_client' in sys.modules and sys.modules['prometheus_client'] is None)",
        dict(os.environ),
    )
    assert out.strip() == "ok True"


def test_adapter_cache_counters_in_prometheus_multiprocess_mode(tmp_path: Path) -> None:
    """vLLM with several API processes sets PROMETHEUS_MULTIPROC_DIR and serves what every
    process wrote there; the counters must land in it."""
    report = (
        "from prometheus_client import CollectorRegistry, generate_latest, multiprocess\n"
        "registry = CollectorRegistry(); multiprocess.MultiProcessCollector(registry)\n"
        "print(generate_latest(registry).decode())"
    )
    out = _run_plugin_script("", report, {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert value(out, "tailor_adapter_cache_hits_total") == 1
    assert value(out, "tailor_adapter_cache_misses_total") == 1
    assert value(out, "tailor_adapter_cache_evictions_total") == 1
