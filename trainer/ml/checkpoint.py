"""Checkpoints: a servable adapter plus what an exact resume needs.

A checkpoint directory holds the peft adapter (`adapter_config.json`,
`adapter_model.safetensors`: what vLLM loads) and beside it `training_state.json` (step,
tokens, the run's fingerprint) and `training_state.pt` (optimizer, scheduler and RNG
states). vLLM ignores the extra files, so the same directory is both the served
`ckpt-step-N` model and the point a requeued job resumes from.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from service.core.naming import TRAINING_STATE_JSON, TRAINING_STATE_PT

STATE_JSON = TRAINING_STATE_JSON
STATE_PT = TRAINING_STATE_PT
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT = 1


class ResumeError(RuntimeError):
    """The checkpoint does not belong to this run (other data or hyperparameters)."""


@dataclass
class TrainingState:
    step: int
    trained_tokens: int
    fingerprint: dict[str, Any]
    # Early stopping's memory: best full_valid_loss, its step, epochs since it improved.
    best: dict[str, float] | None = None


def save_adapter(model: Any, directory: Path) -> None:
    # save_embedding_layers=False: only the LoRA projections, never embeddings (vLLM
    # cannot serve them, and nothing here trains them).
    model.save_pretrained(directory, safe_serialization=True, save_embedding_layers=False)


def save_checkpoint(directory: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainingState) -> Path:
    """Write into a temporary sibling, then rename: a crash never leaves half a checkpoint."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_adapter(model, tmp)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            tmp / STATE_PT,
        )
        meta = {
            "format": FORMAT,
            "step": state.step,
            "trained_tokens": state.trained_tokens,
            "fingerprint": state.fingerprint,
            "best": state.best,
        }
        (tmp / STATE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_adapter_weights(directory: Path, model: Any) -> None:
    """Put a saved adapter's LoRA weights into `model` (same shape: rank and targets)."""
    from peft import set_peft_model_state_dict

    device = next(p.device for p in model.parameters())
    result = set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_WEIGHTS), device=str(device)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ResumeError(f"{directory}: adapter weights do not fit the model ({unexpected[0]} ...)")


def read_state(directory: Path) -> TrainingState:
    try:
        meta = json.loads((directory / STATE_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{directory} is not a Tailor checkpoint (no readable {STATE_JSON})") from exc
    if meta.get("format") != FORMAT:
        raise ResumeError(f"{directory}: checkpoint format {meta.get('format')} is not {FORMAT}")
    return TrainingState(
        step=int(meta["step"]),
        trained_tokens=int(meta["trained_tokens"]),
        fingerprint=meta["fingerprint"],
        best=meta.get("best"),
    )


def restore(
    directory: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, fingerprint: dict[str, Any]
) -> TrainingState:
    """Load adapter weights, optimizer, scheduler and RNG; the run must match the fingerprint."""
    state = read_state(directory)
    if state.fingerprint != fingerprint:
        changed = sorted(k for k in set(fingerprint) | set(state.fingerprint) if fingerprint.get(k) != state.fingerprint.get(k))
        raise ResumeError(f"cannot resume from {directory}: the run differs in {', '.join(changed)}")
    load_adapter_weights(directory, model)
    saved = torch.load(directory / STATE_PT, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return state
