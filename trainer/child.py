"""The process that trains one job. It owns torch (and the GPU); the worker owns everything
else and kills this process to cancel, which frees all its memory at once.

Started with the `spawn` method; reports through the pipe (service/jobs/messages.py) and
dies with its worker, so a SIGKILLed worker leaves no training process behind. A job that
trains data-parallel (trainer/ml/parallel.py) runs as this process (rank 0, the only one
that talks to the worker) and followers it starts with `python -m trainer.child`, which
die with it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path

from service.core.naming import TOKENIZER_DIR
from service.core.net import free_port
from service.core.processes import die_with_parent
from service.jobs.messages import (
    Checkpoint,
    ChildMessage,
    Done,
    Event,
    Failed,
    JobSpec,
    Metrics,
    Pause,
    PausedAt,
    Report,
    Started,
    Validated,
)
from trainer.ml.results import StepMetrics, StopRequest, TrainResult

log = logging.getLogger("tailor.child")

Send = Callable[[ChildMessage], None]
StopCheck = Callable[[], StopRequest]

# What a checkpoint records of the latest step's figures.
CHECKPOINT_METRICS = (
    "step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
    "full_valid_loss", "full_valid_mean_token_accuracy",
)  # fmt: skip


def _start() -> None:
    if not die_with_parent():
        log.warning("prctl unavailable: a killed worker may leave this process running")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s child %(message)s")


def _metrics_values(metrics: StepMetrics) -> dict[str, float]:
    data = asdict(metrics)
    extra = data.pop("extra", {}) or {}
    data.pop("epoch", None)
    data.update(extra)
    return {k: v for k, v in data.items() if v is not None}


def child_main(spec: JobSpec, conn: Connection) -> None:
    _start()
    send: Send = conn.send

    from trainer.ml.base_model import BaseModelError
    from trainer.ml.checkpoint import ResumeError
    from trainer.ml.config import ConfigError
    from trainer.ml.data import DatasetError

    try:
        _run(spec, conn, send)
    except DatasetError as exc:
        send(Failed(exc.code, exc.message, exc.param))
    except ConfigError as exc:
        send(Failed("invalid_hyperparameters", str(exc), "hyperparameters"))
    except BaseModelError as exc:
        # The job asked for something this worker cannot do (QLoRA without CUDA, a hub model offline).
        send(Failed("unsupported_configuration", str(exc)))
    except ResumeError as exc:
        # A checkpoint this run cannot continue from (another format, another model): say
        # which, rather than "stopped unexpectedly"; the user can start a new job.
        send(Failed("checkpoint_unusable", f"Cannot resume this job: {exc}"))
    finally:
        conn.close()


def _stop_reader(conn: Connection) -> StopCheck:
    def should_stop() -> StopRequest:
        while conn.poll():
            if isinstance(conn.recv(), Pause):
                return "pause"
        return None

    return should_stop


def _processes(spec: JobSpec, cuda: bool) -> int:
    """How many processes train the job: the operator's number (TAILOR_TRAIN_PROCESSES),
    else on CUDA the GPUs its base model needs, as far as this worker has them."""
    if spec.processes:
        return spec.processes
    if cuda:
        import torch

        return max(1, min(spec.base_model.gpu_count or 1, torch.cuda.device_count()))
    return 1


def _run(spec: JobSpec, conn: Connection, send: Send) -> None:
    from trainer.ml import parallel
    from trainer.ml.base_model import resolve_device

    cuda = resolve_device(spec.device).type == "cuda"
    world = _processes(spec, cuda)
    if world == 1:
        _train(spec, send, _stop_reader(conn))
        return
    port = free_port()  # process 0 listens here for the others
    followers = [
        subprocess.Popen([sys.executable, "-m", "trainer.child", json.dumps(spec.to_dict()), str(rank), str(world), str(port)])
        for rank in range(1, world)
    ]
    log.info("training on %d processes (%s)", world, "nccl" if cuda else "gloo")
    try:
        with parallel.joined(0, world, port, cuda):
            _train(spec, send, _stop_reader(conn), device="cuda:0" if cuda else None)
    finally:
        for follower in followers:
            try:
                follower.wait(30)
            except subprocess.TimeoutExpired:
                follower.kill()
                follower.wait()


def follower_main(argv: list[str]) -> int:
    """A data-parallel process other than 0: trains its share, reports nothing."""
    _start()
    from trainer.ml import parallel
    from trainer.ml.base_model import resolve_device

    spec = JobSpec.from_dict(json.loads(argv[0]))
    rank, world, port = int(argv[1]), int(argv[2]), int(argv[3])
    cuda = resolve_device(spec.device).type == "cuda"
    with parallel.joined(rank, world, port, cuda):
        _train(spec, lambda message: None, None, device=f"cuda:{rank}" if cuda else None, main=False)
    return 0


def _train(spec: JobSpec, send: Send, should_stop: StopCheck | None, device: str | None = None, main: bool = True) -> None:
    from trainer.ml import report
    from trainer.ml.base_model import load_tokenizer, materialize, resolve_device
    from trainer.ml.config import TrainConfig
    from trainer.ml.lora import adapter_shape
    from trainer.ml.prepare import prepare
    from trainer.ml.train import context_length, replay_source, train

    model_path = materialize(spec.base_model, Path(spec.model_cache_dir))
    lora = dict(spec.lora)
    if spec.init_adapter_dir:  # continued fine-tuning keeps the parent adapter's shape
        lora.update(adapter_shape(Path(spec.init_adapter_dir)))
    config = TrainConfig.from_job(
        spec.method_type,
        spec.hyperparameters,
        lora,
        seed=spec.seed,
        device=device or spec.device,
        checkpoint_interval_seconds=spec.checkpoint_interval_seconds,
        **spec.options,
    )
    tokenizer = load_tokenizer(model_path)
    max_len = min(spec.base_model.context_length or 2048, context_length(model_path))
    validation_path = Path(spec.validation_path) if spec.validation_path else None
    data = prepare(config, tokenizer, max_len, Path(spec.training_path), validation_path, resolve_device(spec.device).type)
    resolved = data.resolved
    resuming = spec.resume_dir is not None

    def ready(tokens_per_second: float | None, replayed: int = 0) -> None:
        """Before the first step: the report (with the measured speed) and the resolved
        hyperparameters; the job then moves to queued and running."""
        if not resuming:
            for warning in data.warnings:
                send(Event(warning, level="warn"))
            if (split := data.split_message()) is not None:
                send(Event(split))
            if replayed:
                send(Event(_replay_event(replayed, resolved.replay_share)))
            data_report = data.report(tokens_per_second)
            data_report["replay"] = {"answers": replayed, "share": resolved.replay_share} if replayed else None
            for warning in data_report["warnings"]:
                send(Event(warning, level="warn"))
            send(Event(report.summary(data_report)))
            send(Report(data_report))
        send(Validated(resolved.hyperparameters(spec.method_type), resolved.total_steps))
        send(Started())

    if resuming:
        ready(None)

    last: dict[str, float] = {}

    def on_step(metrics: StepMetrics) -> None:
        last.clear()
        last.update(_metrics_values(metrics))
        send(Metrics(dict(last)))

    def on_checkpoint(step: int, directory: Path) -> None:
        send(Checkpoint(step, str(directory), {k: float(v) for k, v in last.items() if k in CHECKPOINT_METRICS}))

    result = train(
        config,
        model_path,
        data.train,
        Path(spec.output_dir),
        data.valid,
        on_step=on_step,
        on_checkpoint=on_checkpoint,
        should_stop=should_stop,
        resume_from=Path(spec.resume_dir) if spec.resume_dir else None,
        init_adapter=Path(spec.init_adapter_dir) if spec.init_adapter_dir else None,
        on_ready=None if resuming else ready,
        replay=replay_source(tokenizer, max_len, model_path, Path(spec.model_cache_dir)),
    )
    if result.status != "succeeded":
        send(PausedAt(result.step))
        return
    if main:  # beside the adapter, for `GET /v1/models/{model}/weights`; vLLM reads only the top level
        tokenizer.save_pretrained(Path(str(result.adapter_dir)) / TOKENIZER_DIR)
    for message in _outcome_events(result):
        send(Event(message))
    send(
        Report(
            {
                "highest_loss_examples": [{"line": line, "loss": round(loss, 4)} for line, loss in result.highest_loss_examples],
                "early_stopping": {
                    "stopped_early": result.stopped_early,
                    "best_step": result.best_step or result.step,
                    "best_full_valid_loss": result.best_full_valid_loss,
                    "last_step": result.step,
                    "total_steps": result.total_steps,
                },
            }
        )
    )
    send(Done(str(result.adapter_dir), result.trained_tokens, result.best_step, result.best_in_adapter))


def _replay_event(replayed: int, share: float) -> str:
    return (
        f"Replay: the base model's own answers to {replayed} general prompts join the steps (one for every "
        f"{round(1 / share)} of your examples, their loss weighted like yours), so the tuned model keeps answering "
        "like its base outside this task; set training.replay to false to turn it off"
    )


def _outcome_events(result: TrainResult) -> list[str]:
    out = []
    if result.stopped_early:
        out.append(
            f"Early stopping at step {result.step} of {result.total_steps}: full_valid_loss has not improved "
            f"since step {result.best_step or result.step}"
        )
    if result.best_step is not None:
        out.append(
            f"Kept the checkpoint at step {result.best_step} as the fine-tuned model: its full_valid_loss "
            f"{result.best_full_valid_loss:.4f} is the lowest"
        )
    if result.highest_loss_examples:
        shown = ", ".join(f"line {line} ({loss:.2f})" for line, loss in result.highest_loss_examples[:5])
        out.append(f"Highest-loss training examples (often mislabelled or contradictory): {shown}")
    return out


if __name__ == "__main__":
    sys.exit(follower_main(sys.argv[1:]))
