"""What the training loop reports: per-step metrics, the run's result, and the hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trainer.ml.config import Resolved

StopRequest = Literal["cancel", "pause"] | None


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    epoch: int
    train_loss: float
    train_mean_token_accuracy: float
    trained_tokens: int  # real tokens processed so far (prompt and reply; no padding)
    learning_rate: float
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # DPO: rewards and reward accuracy


@dataclass
class TrainResult:
    status: Literal["succeeded", "paused", "cancelled"]
    step: int
    total_steps: int
    trained_tokens: int
    adapter_dir: Path | None  # final adapter, or the pause checkpoint
    resolved: Resolved
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    # Early stopping: the step kept as the fine-tuned model when it is not the last one.
    best_step: int | None = None
    best_in_adapter: bool = True  # adapter_dir holds best_step's weights
    best_full_valid_loss: float | None = None
    stopped_early: bool = False
    highest_loss_examples: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Hooks:
    on_step: Callable[[StepMetrics], None] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None
    should_stop: Callable[[], StopRequest] | None = None
