"""`tailor demo`: the main job end to end on this machine, through the official `openai` SDK.

Starts a private redis-server, `tailor serve`, `tailor worker`, `tailor eval-worker` and
`tailor inference` (vLLM; SQLite and the local store in a scratch directory), creates a key,
uploads the bundled support-ticket triage dataset (each ticket's right category is known),
split into training, validation and test files, fine-tunes SmolLM2-135M-Instruct on it with
validation and a live progress bar, shows the loss curve and checkpoints, then the
evaluation the job asked for: base against tuned on the unseen test tickets through the
Evals API, and the general-knowledge (forgetting) check; last, a few new tickets to both
models side by side through the chat API. Stops everything it started.
"""

from __future__ import annotations

import json
import sys
import tempfile
import textwrap
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click

from service.cli.devservers import (
    TailorEvalWorker,
    free_port,
    private_redis,
    running_inference,
    running_server,
    running_worker,
)
from service.cli.evals import output_items, report
from service.cli.follow import follow_job, loss_chart
from service.evals.compare import ModelResult, summarize

DATASET = "triage_{}.jsonl"  # train, validation, test
BASE_MODEL = "SmolLM2-135M-Instruct"
JOB_TIMEOUT_SECONDS = 20 * 60
EVALUATION_TIMEOUT_SECONDS = 10 * 60
# In none of the files: the tuned model must triage tickets it never saw.
TICKETS = [
    "I paid for the yearly plan but was charged monthly.",
    "The app closes itself when I tap the share button.",
    "Could you add a way to print my reports?",
]
COLUMN = 46


def _system_prompt() -> str:
    first = resources.files("service").joinpath("data", DATASET.format("test")).read_text().splitlines()[0]
    return str(json.loads(first)["messages"][0]["content"])


SYSTEM_PROMPT = _system_prompt()


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
        "TAILOR_EVAL_QUEUE_NAME": "tailor:demo-evals",
        # Converted base models are kept between runs (the GGUF is converted once).
        "TAILOR_MODEL_CACHE_DIR": str(Path.home() / ".cache" / "tailor" / "models"),
        # The API finds vLLM here; a small KV cache is plenty for a few questions.
        "TAILOR_INFERENCE_PORT": str(free_port()),
        "TAILOR_VLLM_KV_CACHE_BYTES": str(512 * 1024**2),
        "TAILOR_INFERENCE_TIMEOUT_SECONDS": "300",
    }
    data = workdir / "data"
    _say(f"starting a private redis-server, tailor serve, worker, eval-worker and inference (data in {workdir})")
    with private_redis(workdir / "redis") as redis_url:
        env["TAILOR_REDIS_URL"] = redis_url
        # vLLM boots (a minute or two on CPU) while the worker trains. Every process shares
        # the data dir, hence the local object store; clean_env drops the user's TAILOR_* settings.
        with (
            running_inference(env, data) as inference,
            running_server(env, data) as server,
            running_worker(env, data) as worker,
            running_worker(env, data, "eval-worker", TailorEvalWorker) as eval_worker,
        ):
            key = server.create_key("demo")
            _say(f"created an API key for project 'demo': {key[:14]}…")
            with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=2, timeout=300) as client:
                job = _train(client, worker)
                _say("the job asked for an evaluation: the eval worker runs it once vLLM is ready")
                inference.wait_ready()
                _show_evaluation(client, job.id, eval_worker)
                _compare(client, job.fine_tuned_model)
    _say("stopped tailor inference, eval-worker, worker, tailor serve and redis-server")


def _show_evaluation(client: Any, job_id: str, eval_worker: Any) -> None:
    """The job's own evaluation, read back through the Evals API: the test tickets' table and
    where the models differ, then the forgetting check."""
    deadline = time.monotonic() + EVALUATION_TIMEOUT_SECONDS
    while (evaluation := client.fine_tuning.jobs.retrieve(job_id).model_extra.get("evaluation") or {}).get("status") in (
        "pending",
        "running",
    ):
        if time.monotonic() > deadline:
            raise click.ClickException(f"the job's evaluation did not finish\n{eval_worker.log_tail()}")
        time.sleep(2)
    if evaluation.get("status") != "completed":
        raise click.ClickException(f"the job's evaluation ended {evaluation.get('status')}\n{eval_worker.log_tail()}")
    test = evaluation["test"]
    ev = client.evals.retrieve(test["eval_id"])
    names = [c.name for c in ev.testing_criteria]
    results: list[ModelResult] = []
    rows: dict[int, dict[str, Any]] = {}
    for who in ("base", "tuned"):
        run = client.evals.runs.retrieve(test["runs"][who], eval_id=ev.id)
        items = output_items(client, ev.id, run.id)
        rows |= {i["datasource_item_id"]: {"item": i["datasource_item"]} for i in items}
        results.append(summarize(run.model, items, names))
    _say(f"test tickets ({test['items']}, never trained on), base against tuned, greedy (eval {ev.id}):")
    click.echo(report(results, names, [rows[i] for i in sorted(rows)], shown=5))
    knowledge = evaluation.get("general_knowledge_check")
    if knowledge:
        base, tuned = knowledge["base"], knowledge["tuned"]
        _say(
            f"general knowledge kept: {tuned['passed']}/{tuned['total']} "
            f"(the base knew {base['passed']}/{base['total']}; {knowledge['lost']} lost)"
        )


def _compare(client: Any, tuned: str) -> None:
    """New tickets to the base and the tuned model, greedy, answers side by side."""
    _say(f"new tickets to {BASE_MODEL} and {tuned} (temperature 0)")
    rule = "-" * (2 * COLUMN + 3)
    click.echo(rule)
    click.echo(f"{'base model':<{COLUMN}} | fine-tuned model")
    for ticket in TICKETS:
        answers = [_ask(client, model, ticket) for model in (BASE_MODEL, tuned)]
        click.echo(rule)
        click.echo(click.style(ticket, bold=True))
        left, right = (textwrap.wrap(a, COLUMN) or [""] for a in answers)
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            click.echo(f"{a:<{COLUMN}} | {b}")
    click.echo(rule)


def _ask(client: Any, model: str, ticket: str) -> str:
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": ticket}],
        temperature=0,
        max_tokens=24,
    )
    return " ".join((answer.choices[0].message.content or "").split())


def _upload(client: Any, part: str) -> Any:
    dataset = resources.files("service").joinpath("data", DATASET.format(part))
    with resources.as_file(dataset) as path, open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="fine-tune")
    _say(f"uploaded {uploaded.filename}: {uploaded.id}, {uploaded.bytes} bytes")
    return uploaded


def _train(client: Any, worker: Any) -> Any:
    training, validation, test = (_upload(client, part) for part in ("train", "validation", "test"))
    job = client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=training.id,
        validation_file=validation.id,
        suffix="triage",
        # No hyperparameters: every one "auto", the defaults are the product (bench/quality.py).
        # Tailor's extension: once trained, measure the tuned model against its base.
        extra_body={"evaluation": {"test_file": test.id, "max_tokens": 8}},
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
