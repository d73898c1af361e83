"""The process that trains one job. It owns torch (and the GPU); the worker owns everything
else and kills this process to cancel, which frees all its memory at once.

Started with the `spawn` method; reports through the pipe (trainer/protocol.py) and dies
with its worker, so a SIGKILLed worker leaves no training process behind. A job that
trains data-parallel (trainer/ml/parallel.py) runs as this process (rank 0, the only one
that talks to the worker) and followers it starts with `python -m trainer.child`, which
die with it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import signal
import subprocess
import sys
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from trainer.protocol import PAUSE, JobSpec, message

log = logging.getLogger("tailor.child")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the worker dies, however it dies."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            log.warning("prctl unavailable: a killed worker may leave this process running")


def _metrics_payload(metrics: Any) -> dict[str, Any]:
    data = asdict(metrics)
    extra = data.pop("extra", {}) or {}
    data.pop("epoch", None)
    data.update(extra)
    return {k: v for k, v in data.items() if v is not None}


def child_main(spec_dict: dict[str, Any], conn: Connection) -> None:
    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s child %(message)s")
    spec = JobSpec(**spec_dict)

    def send(kind: str, **payload: Any) -> None:
        conn.send(message(kind, **payload))  # type: ignore[arg-type]

    from trainer.ml.base_model import BaseModelError
    from trainer.ml.checkpoint import ResumeError
    from trainer.ml.config import ConfigError
    from trainer.ml.data import DatasetError

    try:
        _run(spec, conn, send)
    except DatasetError as exc:
        send("failed", code=exc.code, message=exc.message, param=exc.param)
    except ConfigError as exc:
        send("failed", code="invalid_hyperparameters", message=str(exc), param="hyperparameters")
    except BaseModelError as exc:
        # The job asked for something this worker cannot do (QLoRA without CUDA, a hub model offline).
        send("failed", code="unsupported_configuration", message=str(exc), param=None)
    except ResumeError as exc:
        # A checkpoint this run cannot continue from (another format, another model): say
        # which, rather than "stopped unexpectedly"; the user can start a new job.
        send("failed", code="checkpoint_unusable", message=f"Cannot resume this job: {exc}", param=None)
    finally:
        conn.close()


def _stop_reader(conn: Connection) -> Any:
    def should_stop() -> str | None:
        while conn.poll():
            if conn.recv() == PAUSE:
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

        return max(1, min(int(spec.base_model.get("gpu_count") or 1), torch.cuda.device_count()))
    return 1


def _run(spec: JobSpec, conn: Connection, send: Any) -> None:
    from trainer.ml import parallel
    from trainer.ml.base_model import resolve_device

    cuda = resolve_device(spec.device).type == "cuda"
    world = _processes(spec, cuda)
    if world == 1:
        _train(spec, send, _stop_reader(conn))
        return
    from service.devservers import free_port

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
    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s child %(message)s")
    from trainer.ml import parallel
    from trainer.ml.base_model import resolve_device

    spec = JobSpec(**json.loads(argv[0]))
    rank, world, port = int(argv[1]), int(argv[2]), int(argv[3])
    cuda = resolve_device(spec.device).type == "cuda"
    with parallel.joined(rank, world, port, cuda):
        _train(spec, lambda kind, **payload: None, None, device=f"cuda:{rank}" if cuda else None)
    return 0


def _train(spec: JobSpec, send: Any, should_stop: Any, device: str | None = None) -> None:
    from service.model_registry import BaseModelSpec
    from trainer.ml.base_model import load_tokenizer, materialize, resolve_device
    from trainer.ml.config import TrainConfig, resolve_auto
    from trainer.ml.data import load_dataset
    from trainer.ml.train import context_length, train

    model_path = materialize(BaseModelSpec(**spec.base_model), Path(spec.model_cache_dir))
    config = TrainConfig.from_job(
        spec.method_type, spec.hyperparameters, spec.lora, seed=spec.seed, device=device or spec.device, **spec.options
    )
    tokenizer = load_tokenizer(model_path)
    max_len = min(int(spec.base_model.get("context_length") or 2048), context_length(model_path))
    train_data = load_dataset(Path(spec.training_path), tokenizer, spec.method_type, max_len, "training")
    valid_data = (
        load_dataset(Path(spec.validation_path), tokenizer, spec.method_type, max_len, "validation")
        if spec.validation_path
        else None
    )
    for _, warning in list(train_data.warnings) + list(valid_data.warnings if valid_data else []):
        send("event", level="warn", message=warning)
    resolved = resolve_auto(config, len(train_data), resolve_device(spec.device).type)
    send("validated", hyperparameters=resolved.hyperparameters(spec.method_type), total_steps=resolved.total_steps)
    send("started")

    last: dict[str, Any] = {}

    def on_step(metrics: Any) -> None:
        last.clear()
        last.update(_metrics_payload(metrics))
        send("metrics", **last)

    def on_checkpoint(step: int, directory: Path) -> None:
        keep = ("step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                "full_valid_loss", "full_valid_mean_token_accuracy")
        send("checkpoint", step=step, dir=str(directory), metrics={k: float(v) for k, v in last.items() if k in keep})

    result = train(
        config,
        model_path,
        train_data,
        Path(spec.output_dir),
        valid_data,
        on_step=on_step,
        on_checkpoint=on_checkpoint,
        should_stop=should_stop,
        resume_from=Path(spec.resume_dir) if spec.resume_dir else None,
    )
    if result.status == "succeeded":
        send("done", dir=str(result.adapter_dir), trained_tokens=result.trained_tokens)
    else:
        send("paused", step=result.step)


if __name__ == "__main__":
    sys.exit(follower_main(sys.argv[1:]))
