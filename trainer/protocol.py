"""Messages between a worker and the child process that trains one job.

The child owns torch and the GPU; the worker owns the database, the object store and the
queue. They talk over a multiprocessing pipe in plain dicts (picklable, easy to log), each
with a `kind`. Child → worker kinds are listed in `ChildMessage`; worker → child sends
only `PAUSE`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PAUSE = "pause"

ChildKind = Literal["event", "validated", "started", "metrics", "checkpoint", "paused", "done", "failed"]


@dataclass
class JobSpec:
    """Everything the child needs, resolved by the worker (paths are local)."""

    job_id: str
    method_type: Literal["supervised", "dpo"]
    hyperparameters: dict[str, Any]
    lora: dict[str, Any]
    seed: int
    base_model: dict[str, Any]
    model_cache_dir: str
    training_path: str
    validation_path: str | None
    output_dir: str
    device: str
    resume_dir: str | None = None
    resume_step: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    # Processes that train the job data-parallel; None: the child decides (trainer/child.py).
    processes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def message(kind: ChildKind, **payload: Any) -> dict[str, Any]:
    return {"kind": kind, **payload}
