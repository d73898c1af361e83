"""The Weights & Biases integration (`integrations: [{"type": "wandb", "wandb": {...}}]`), as
OpenAI offers it: the worker logs the job's metrics by step (the names of its metrics
events), its config and a final summary through the `wandb` library.

The API key is the worker's own (`WANDB_API_KEY`, or `WANDB_MODE=offline`); with neither,
the job trains anyway and an event says the integration was skipped. The run's id is the
job's, so a job resumed on another worker continues the same run. `wandb` calls block, so
they run in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("tailor.worker")


def wandb_config(integrations: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    for integration in integrations or []:
        if integration.get("type") == "wandb":
            return dict(integration.get("wandb") or {})
    return None


def unavailable() -> str | None:
    """Why the integration cannot run on this worker, or None."""
    if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
        return "WANDB_API_KEY is not set on the worker"
    try:
        import wandb  # noqa: F401
    except ImportError:
        return "the wandb library is not installed on the worker"
    return None


class WandbSink:
    def __init__(self, job: Any, config: dict[str, Any], workdir: Path):
        self.job, self.config, self.workdir = job, config, workdir
        self.run: Any = None

    def _start(self) -> None:
        import wandb

        job = self.job
        method = job.method or {}
        self.run = wandb.init(
            project=self.config.get("project"),
            entity=self.config.get("entity"),
            name=self.config.get("name") or job.id,
            id=job.id,
            resume="allow",
            tags=[*(self.config.get("tags") or []), "tailor/finetune", f"tailor/{job.model}", job.id],
            config={
                "model": job.model,
                "method": method.get("type"),
                "hyperparameters": (method.get(method.get("type", ""), {}) or {}).get("hyperparameters"),
                "lora": (job.extra_hyperparameters or {}).get("lora"),
                "seed": job.seed,
                "training_file": job.training_file,
                "validation_file": job.validation_file,
            },
            dir=str(self.workdir),
            reinit="create_new",
        )

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    async def log(self, step: int, values: dict[str, Any]) -> None:
        if self.run is not None:
            numbers = {k: v for k, v in values.items() if isinstance(v, int | float) and k != "step"}
            await asyncio.to_thread(self.run.log, numbers, step=step)

    async def finish(self, summary: dict[str, Any], failed: bool) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None

        def end() -> None:
            for key, value in summary.items():
                run.summary[key] = value
            run.finish(exit_code=1 if failed else 0)

        await asyncio.to_thread(end)
