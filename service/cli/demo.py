"""`tailor demo`: the main job end to end on this machine, through the official `openai` SDK.

Starts a private redis-server, `tailor serve`, `tailor worker` and `tailor inference` (vLLM;
SQLite and the local store in a scratch directory), creates a key, uploads the bundled
dataset (answers in a pirate's voice), fine-tunes SmolLM2-135M-Instruct on it with a live
progress bar, shows the loss curve and checkpoints, asks the base and the tuned model the
same new questions through the chat API and prints the answers side by side, then stops
everything it started.
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

import click

from service.cli.devservers import free_port, private_redis, running_inference, running_server, running_worker
from service.cli.follow import follow_job, loss_chart

DATASET = "pirate_train.jsonl"
BASE_MODEL = "SmolLM2-135M-Instruct"
JOB_TIMEOUT_SECONDS = 20 * 60
# Not in the training file: the tuned model must carry the voice over to new questions.
QUESTIONS = [
    "What is the capital of Italy?",
    "How many hours are in a day?",
    "What is the largest ocean?",
    "Give me a tip for sleeping well.",
]
COLUMN = 46


def _show_result(client: Any, job: Any) -> None:
    metrics = [e.data for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data) if e.type == "metrics"]
    _say(f"fine-tuned model: {job.fine_tuned_model} ({job.trained_tokens} tokens trained)")
    click.echo(loss_chart([m["train_loss"] for m in metrics]))
    for ckpt in reversed(client.fine_tuning.jobs.checkpoints.list(job.id).data):
        click.echo(
            f"    checkpoint step {ckpt.step_number}: {ckpt.fine_tuned_model_checkpoint} "
            f"(train loss {ckpt.metrics.train_loss:.3f})"
        )
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
        # The API finds vLLM here; a small KV cache is plenty for a few questions.
        "TAILOR_INFERENCE_PORT": str(free_port()),
        "TAILOR_VLLM_KV_CACHE_BYTES": str(512 * 1024**2),
        "TAILOR_INFERENCE_TIMEOUT_SECONDS": "300",
    }
    data = workdir / "data"
    _say(f"starting a private redis-server, tailor serve, tailor worker and tailor inference (data in {workdir})")
    with private_redis(workdir / "redis") as redis_url:
        env["TAILOR_REDIS_URL"] = redis_url
        # vLLM boots (a minute or two on CPU) while the worker trains. Every process shares
        # the data dir, hence the local object store; clean_env drops the user's TAILOR_* settings.
        with (
            running_inference(env, data) as inference,
            running_server(env, data) as server,
            running_worker(env, data) as worker,
        ):
            key = server.create_key("demo")
            _say(f"created an API key for project 'demo': {key[:14]}…")
            with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=2, timeout=300) as client:
                job = _train(client, worker)
                _say("waiting for vLLM to be ready (tailor inference)")
                inference.wait_ready()
                _compare(client, job.fine_tuned_model)
    _say("stopped tailor inference, tailor worker, tailor serve and redis-server")


def _compare(client: Any, tuned: str) -> None:
    """The same questions to the base and the tuned model, greedy, answers side by side."""
    _say(f"asking {BASE_MODEL} and {tuned} the same questions (temperature 0)")
    rule = "-" * (2 * COLUMN + 3)
    click.echo(rule)
    click.echo(f"{'base model':<{COLUMN}} | fine-tuned model")
    for question in QUESTIONS:
        answers = [_ask(client, model, question) for model in (BASE_MODEL, tuned)]
        click.echo(rule)
        click.echo(click.style(question, bold=True))
        left, right = (textwrap.wrap(a, COLUMN) or [""] for a in answers)
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            click.echo(f"{a:<{COLUMN}} | {b}")
    click.echo(rule)


def _ask(client: Any, model: str, question: str) -> str:
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": question}],
        temperature=0,
        max_tokens=40,
    )
    return " ".join((answer.choices[0].message.content or "").split())


def _train(client: Any, worker: Any) -> Any:
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
    return job


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tailor-demo-") as tmp:
        run_demo(Path(tmp))
