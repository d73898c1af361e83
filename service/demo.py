"""`tailor demo`: the main job end to end on this machine, through the official `openai` SDK.

Starts a private redis-server, `tailor serve` and `tailor worker` (SQLite and the local
store in a scratch directory), creates a key, uploads the bundled dataset (answers in a
pirate's voice), fine-tunes SmolLM2-135M-Instruct on it with a live progress bar, shows the
loss curve and checkpoints, then stops everything it started.
"""

from __future__ import annotations

import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import click

from service.devservers import private_redis, running_server, running_worker
from service.follow import follow_job, loss_chart

DATASET = "pirate_train.jsonl"
BASE_MODEL = "SmolLM2-135M-Instruct"
JOB_TIMEOUT_SECONDS = 20 * 60


def _show_result(client: Any, job: Any) -> None:
    metrics = [
        e.data for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data) if e.type == "metrics"
    ]
    _say(f"fine-tuned model: {job.fine_tuned_model} ({job.trained_tokens} tokens trained)")
    click.echo(loss_chart([m["train_loss"] for m in metrics]))
    for ckpt in reversed(client.fine_tuning.jobs.checkpoints.list(job.id).data):
        click.echo(f"    checkpoint step {ckpt.step_number}: {ckpt.fine_tuned_model_checkpoint} "
                   f"(train loss {ckpt.metrics.train_loss:.3f})")
    results = client.files.content(job.result_files[0]).text.splitlines()
    _say(f"result file step_metrics.csv: {len(results) - 1} rows, e.g. {results[-1]}")


def _say(text: str) -> None:
    click.echo(click.style("==> ", fg="cyan", bold=True) + text)


def run_demo(workdir: Path) -> None:
    import openai

    env = {
        "TAILOR_DATA_DIR": str(workdir / "data"),
        "TAILOR_QUEUE_NAME": "tailor:demo",
        # Converted base models are kept between runs (the GGUF is converted once).
        "TAILOR_MODEL_CACHE_DIR": str(Path.home() / ".cache" / "tailor" / "models"),
    }
    _say(f"starting a private redis-server, tailor serve and tailor worker (data in {workdir})")
    with private_redis(workdir / "redis") as redis_url:
        env["TAILOR_REDIS_URL"] = redis_url
        # The demo's state lives in its scratch directory: clean_env drops the user's TAILOR_* settings.
        with running_server(env, workdir / "data") as server, running_worker(env, workdir / "data") as worker:
            key = server.create_key("demo")
            _say(f"created an API key for project 'demo': {key[:14]}…")
            with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=2) as client:
                _train(client, worker)
    _say("stopped tailor worker, tailor serve and redis-server")


def _train(client: Any, worker: Any) -> None:
    dataset = resources.files("service").joinpath("data", DATASET)
    with resources.as_file(dataset) as path, open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="fine-tune")
    _say(f"uploaded {uploaded.filename}: {uploaded.id}, {uploaded.bytes} bytes")

    job = client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=uploaded.id,
        suffix="pirate",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    )
    _say(f"created fine-tuning job {job.id} on {job.model}; a worker trains it (tailor jobs follow):")
    job = follow_job(client, job.id, out=sys.stdout, timeout=JOB_TIMEOUT_SECONDS)
    if job.status != "succeeded":
        raise click.ClickException(f"job {job.id} ended {job.status}: {job.error}\n{worker.log_tail()}")
    _show_result(client, job)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tailor-demo-") as tmp:
        run_demo(Path(tmp))
