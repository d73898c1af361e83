"""The training configuration, with help text per field, and the rules for "auto" values.

OpenAI hyperparameters (n_epochs, batch_size, learning_rate_multiplier, beta) may be
"auto"; `resolve_auto` turns them into numbers from the dataset size once, before
training, so a resumed job and its checkpoints agree on them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Auto = Literal["auto"]
AUTO: Auto = "auto"

# LoRA learning rates at batch size 8 and above (multiplied by learning_rate_multiplier);
# "auto" lowers them with the square root of a smaller batch. LoRA wants about ten times the rate
# of full fine-tuning; 2e-4 under-trained small files (bench/quality.py). DPO's loss is
# sharper, so its rate is lower.
BASE_LEARNING_RATE = {"supervised": 5e-4, "dpo": 5e-5}
REFERENCE_BATCH = 8
# Epoch rule: 2 epochs (a third bought nothing in bench/quality.py but time), raised for
# small files until a run makes MIN_AUTO_STEPS optimizer steps (small files under-train
# otherwise), lowered for huge ones to MAX_TARGET_EXAMPLES.
DEFAULT_EPOCHS = 2
MIN_AUTO_STEPS = 24
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 10
MAX_AUTO_BATCH = 32
# Validation held out when the job has no validation file: VALIDATION_SHARE of the
# examples, at most MAX_AUTO_VALIDATION, only for files of MIN_SPLIT_EXAMPLES or more.
VALIDATION_SHARE = 0.1
MAX_AUTO_VALIDATION = 200
MIN_SPLIT_EXAMPLES = 50
MIN_TRAINING_AFTER_SPLIT = 10
# Early stopping: full_valid_loss not improving by EARLY_STOPPING_MIN_DELTA (relative)
# for this many consecutive epochs stops the run.
DEFAULT_PATIENCE = 2
EARLY_STOPPING_MIN_DELTA = 0.005
# Replay (trainer/ml/replay.py): the base model's own answers to general prompts, as many
# as this share of the user's examples, spread over the steps, against forgetting.
# Supervised only. Their loss (mean per trained token) is added to the user's at
# REPLAY_WEIGHT, so the user's task keeps its full learning rate whatever the lengths: with
# one loss over all tokens, a file of one-word labels got a quarter of its gradient
# (bench/quality.py: 85% where the plain loop reached 98%).
REPLAY_SHARE = 0.125
REPLAY_WEIGHT = 1.0


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    method: Literal["supervised", "dpo"] = field(default="supervised", metadata=_help("Fine-tuning method."))
    n_epochs: int | Auto = field(default=AUTO, metadata=_help("Passes over the training file."))
    batch_size: int | Auto = field(default=AUTO, metadata=_help("Examples (DPO: pairs) per optimizer step."))
    learning_rate_multiplier: float | Auto = field(
        default=AUTO,
        metadata=_help(
            "Multiplies the base LoRA learning rate (5e-4 supervised, 5e-5 DPO, at batch 8; auto: 1 x sqrt(batch / 8))."
        ),
    )
    beta: float | Auto = field(default=AUTO, metadata=_help("DPO: how strongly to stay near the base model."))
    lora_rank: int = field(default=16, metadata=_help("LoRA rank r of every adapted projection."))
    lora_alpha: float = field(default=32, metadata=_help("LoRA alpha; the update is scaled by alpha / rank."))
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA input during training."))
    seed: int = field(default=0, metadata=_help("Seeds adapter init, example order and dropout."))
    max_seq_len: int | None = field(
        default=None, metadata=_help("Longest example in tokens; longer ones are truncated. None: the model's context.")
    )
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or cuda:N."))
    dtype: str = field(default="auto", metadata=_help("auto (bf16 on GPUs that have it, else fp32), float32, bfloat16."))
    gradient_checkpointing: bool = field(default=False, metadata=_help("Recompute activations: less memory, ~30% slower."))
    qlora: bool = field(default=False, metadata=_help("Load the base model in 4-bit NF4 (CUDA and bitsandbytes only)."))
    micro_batch_tokens: int | Auto = field(
        default=AUTO,
        metadata=_help("Token budget of one forward pass; a step is accumulated over as many as it needs."),
    )
    pack_len: int | Auto = field(
        default=AUTO, metadata=_help("Row length examples are packed into (at least the longest example).")
    )
    eval_interval: int | Auto = field(default=AUTO, metadata=_help("Steps between validation-batch metrics."))
    warmup_ratio: float = field(default=0.03, metadata=_help("Fraction of steps with a linear learning-rate warmup."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay on the adapter."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping norm; 0 disables clipping."))
    validation_split: float | Auto = field(
        default=AUTO,
        metadata=_help("Share of the training file held out as validation when the job has none; 0 turns it off."),
    )
    early_stopping_patience: int | Auto = field(
        default=AUTO,
        metadata=_help("Epochs without a better full_valid_loss before training stops; 0 turns early stopping off."),
    )
    replay: bool | Auto = field(
        default=AUTO,
        metadata=_help("Mix the base model's answers to general prompts into each step (auto: supervised only)."),
    )
    checkpoint_interval_seconds: float | None = field(
        default=None, metadata=_help("Also checkpoint after the first step this long after the last checkpoint.")
    )

    @classmethod
    def from_job(
        cls, method: str, hyperparameters: dict[str, Any], lora: dict[str, Any] | None = None, **extra: Any
    ) -> TrainConfig:
        """Build from a job's method hyperparameters and its LoRA extras (rank, alpha, dropout)."""
        values: dict[str, Any] = {"method": method, **extra}
        for key in ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"):
            if key in hyperparameters and hyperparameters[key] is not None:
                values[key] = hyperparameters[key]
        for key in ("rank", "alpha", "dropout"):
            if lora and lora.get(key) is not None:
                values[f"lora_{key}"] = lora[key]
        return cls(**values)

    def help(self) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Resolved:
    """The numbers a run uses; recorded in checkpoints and reported back to the job."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    beta: float
    micro_batch_tokens: int
    pack_len: int
    eval_interval: int
    steps_per_epoch: int
    total_steps: int
    early_stopping_patience: int = 0  # epochs; 0: off
    replay_share: float = 0.0  # replayed base answers per user example, spread over the steps; 0: off

    def hyperparameters(self, method: str) -> dict[str, Any]:
        """What the API shows once "auto" is resolved."""
        out: dict[str, Any] = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        if method == "dpo":
            out["beta"] = self.beta
        return out


def auto_batch_size(n_examples: int) -> int:
    """About a 24th of the file rounded down to a power of two, 1 to 32: small files get two
    dozen steps per epoch or more (LoRA learns poorly from few large steps: at a dozen,
    bench/quality.py's classification scored 91-92% and lost 9 probe answers, at two dozen
    96% and 2, for the same examples trained), large ones a steady gradient."""
    return max(1, min(MAX_AUTO_BATCH, 2 ** int(math.log2(max(1, n_examples // 24)))))


def auto_epochs(n_examples: int, batch_size: int) -> int:
    steps_per_epoch = math.ceil(n_examples / max(1, batch_size))
    if n_examples * DEFAULT_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return max(DEFAULT_EPOCHS, min(MAX_AUTO_EPOCHS, math.ceil(MIN_AUTO_STEPS / steps_per_epoch)))


def auto_learning_rate_multiplier(batch_size: int) -> float:
    """Square-root scaling below the reference batch (a small batch's step is noisier);
    never above 1, so large files on large models keep the usual LoRA rate."""
    return round(min(1.0, math.sqrt(batch_size / REFERENCE_BATCH)), 4)


def validation_count(n_examples: int, split: float | Auto) -> int:
    """How many examples to hold out as validation (0: none)."""
    if split == AUTO:
        if n_examples < MIN_SPLIT_EXAMPLES:
            return 0
        return min(MAX_AUTO_VALIDATION, max(5, round(n_examples * VALIDATION_SHARE)))
    return max(0, min(n_examples - MIN_TRAINING_AFTER_SPLIT, round(n_examples * float(split)))) if split else 0


class ConfigError(ValueError):
    """A hyperparameter out of range; the message names it and the allowed range."""


def _check(config: TrainConfig) -> None:
    def positive(name: str, value: object, integer: bool) -> None:
        if value == AUTO:
            return
        # JSON hyperparameters may arrive as 16.0: a whole float counts as an integer.
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (integer and not whole) or value <= 0:  # type: ignore[operator]
            kind = "integer" if integer else "number"
            raise ConfigError(f"{name} must be a positive {kind} or 'auto', not {value!r}")

    if config.method not in BASE_LEARNING_RATE:
        raise ConfigError(f"method must be supervised or dpo, not {config.method!r}")
    for name in ("n_epochs", "batch_size", "micro_batch_tokens", "pack_len", "eval_interval", "lora_rank"):
        positive(name, getattr(config, name), integer=True)
    for name in ("learning_rate_multiplier", "beta", "lora_alpha"):
        positive(name, getattr(config, name), integer=False)
    if config.validation_split != AUTO and not (
        isinstance(config.validation_split, int | float) and 0 <= config.validation_split <= 0.5
    ):
        raise ConfigError(f"validation_split must be 'auto' or a share from 0 to 0.5, not {config.validation_split!r}")
    patience = config.early_stopping_patience
    if patience != AUTO and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 0):
        raise ConfigError(f"early_stopping_patience must be 'auto' or an integer >= 0, not {patience!r}")
    if not 0 <= config.lora_dropout < 1:
        raise ConfigError(f"lora_dropout must be in [0, 1), not {config.lora_dropout!r}")


def resolve_auto(config: TrainConfig, n_examples: int, device_type: str = "cpu") -> Resolved:
    """Numbers for every "auto" field, from the dataset size (and CPU vs GPU budgets)."""
    _check(config)
    gpu = device_type == "cuda"
    batch = auto_batch_size(n_examples) if config.batch_size == AUTO else int(config.batch_size)
    batch = max(1, min(batch, n_examples))
    n_epochs = auto_epochs(n_examples, batch) if config.n_epochs == AUTO else int(config.n_epochs)
    lrm = (
        auto_learning_rate_multiplier(batch)
        if config.learning_rate_multiplier == AUTO
        else float(config.learning_rate_multiplier)
    )
    patience = DEFAULT_PATIENCE if config.early_stopping_patience == AUTO else int(config.early_stopping_patience)
    beta = 0.1 if config.beta == AUTO else float(config.beta)
    steps_per_epoch = math.ceil(n_examples / batch)
    total = steps_per_epoch * n_epochs
    return Resolved(
        n_epochs=n_epochs,
        batch_size=batch,
        learning_rate_multiplier=lrm,
        learning_rate=BASE_LEARNING_RATE[config.method] * lrm,
        beta=beta,
        # CPU: small forwards keep memory low (~4 GiB for SmolLM2) and cost no speed: a
        # CPU's few cores are already busy at a few hundred tokens.
        micro_batch_tokens=(16_384 if gpu else 1_024) if config.micro_batch_tokens == AUTO else int(config.micro_batch_tokens),
        # Short rows on CPU: the masked attention of a row costs its length squared.
        pack_len=(4_096 if gpu else 512) if config.pack_len == AUTO else int(config.pack_len),
        # valid_loss five times a run (and full_valid_loss every epoch): validation is not free.
        eval_interval=max(1, total // 5) if config.eval_interval == AUTO else int(config.eval_interval),
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        early_stopping_patience=patience,
        replay_share=REPLAY_SHARE if replays(config) else 0.0,
    )


def replays(config: TrainConfig) -> bool:
    return config.method == "supervised" if config.replay == AUTO else bool(config.replay)


def replay_count(step: int, batch_size: int, share: float) -> int:
    """Replayed examples in `step`: share x batch on average, whole examples, spread evenly
    (a batch of 2 at a quarter gets one every other step)."""
    return math.floor((step + 1) * batch_size * share) - math.floor(step * batch_size * share)
