"""Messages between a worker and the child process that trains one of its jobs.

The child owns torch and the GPU; the worker owns the database, the object store and the
queue. They talk over a multiprocessing pipe in the dataclasses below (pickled; the
worker dispatches on their type with `match`). The worker sends the child `JobSpec` at
start and `Pause` at most once; the child sends `ChildMessage`s, ending with `Done`,
`PausedAt` or `Failed`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from service.core.registry import BaseModelSpec

if TYPE_CHECKING:
    # Only for the annotation: at run time lifecycle brings SQLAlchemy and Alembic, which
    # the training child (and each data-parallel follower) would import for nothing.
    from service.jobs.lifecycle import Level

Method = Literal["supervised", "dpo"]


@dataclass
class JobSpec:
    """Everything the child needs, resolved by the worker (paths are local)."""

    job_id: str
    method_type: Method
    hyperparameters: dict[str, Any]
    lora: dict[str, Any]
    seed: int
    base_model: BaseModelSpec
    model_cache_dir: str
    training_path: str
    validation_path: str | None
    output_dir: str
    device: str
    resume_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # Processes that train the job data-parallel; None: the child decides (trainer/child.py).
    processes: int | None = None
    # Checkpoint at least this often besides every epoch (TAILOR_CHECKPOINT_INTERVAL_SECONDS).
    checkpoint_interval_seconds: float | None = None
    # Continued fine-tuning: the parent model's adapter, downloaded; training starts from it.
    init_adapter_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a data-parallel follower gets its spec on the command line)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(**{**data, "base_model": BaseModelSpec(**data["base_model"])})


@dataclass(frozen=True)
class Pause:
    """Worker to child: save a checkpoint and stop."""


@dataclass(frozen=True)
class Event:
    message: str
    level: Level = "info"


@dataclass(frozen=True)
class Validated:
    """The files are usable; `hyperparameters` are the job's with every "auto" resolved."""

    hyperparameters: dict[str, Any]
    total_steps: int


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Report:
    """The data report (trainer/ml/report.py), as JSON-ready values; sent before training
    and again at the end with what training found (highest-loss examples, early stopping)."""

    values: dict[str, Any]


@dataclass(frozen=True)
class Metrics:
    """One training step's figures (step, total_steps, train_loss, … as the job's metrics
    events carry them; DPO adds its rewards)."""

    values: dict[str, float]

    @property
    def step(self) -> int:
        return int(self.values["step"])

    @property
    def total_steps(self) -> int:
        return int(self.values["total_steps"])


@dataclass(frozen=True)
class Checkpoint:
    step: int
    dir: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class PausedAt:
    """The run stopped as asked; its last checkpoint was sent before this."""

    step: int


@dataclass(frozen=True)
class Done:
    dir: str
    trained_tokens: int
    # Early stopping: the step kept as the model when it is not the last one, and whether
    # `dir` already holds its weights (else the worker copies the stored checkpoint).
    best_step: int | None = None
    best_in_dir: bool = True


@dataclass(frozen=True)
class Failed:
    code: str
    message: str
    param: str | None = None


ChildMessage = Event | Validated | Started | Report | Metrics | Checkpoint | PausedAt | Done | Failed
