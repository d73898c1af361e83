"""The LoRA adapter: every linear projection of the decoder, nothing else.

vLLM serves LoRA on linear projections only and cannot serve `modules_to_save`, so the
adapter never touches embeddings, norms or the output head.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from trainer.ml.config import TrainConfig


def lora_targets(model: Any) -> list[str]:
    """Names of every linear projection inside the decoder (never the output head: vLLM
    serves linear-projection LoRA only, and never modules_to_save)."""
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and "." in name
    }
    return sorted(names)


def build_lora_model(base: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=int(config.lora_rank),
        # An integral alpha is written as an int: adapter_config.json readers expect one.
        lora_alpha=int(config.lora_alpha) if float(config.lora_alpha).is_integer() else config.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=config.lora_dropout,
        target_modules=lora_targets(base),
        bias="none",
        task_type="CAUSAL_LM",
    )
    if config.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with warnings.catch_warnings():
        # peft asks for a property transformers 5 deprecated; nothing for us to change.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(base, lora)


def adapter_shape(directory: Path) -> dict[str, Any]:
    """Rank, alpha and dropout of a saved adapter: a continued job trains the same shape."""
    config = json.loads((directory / "adapter_config.json").read_text())
    return {"rank": int(config["r"]), "alpha": config["lora_alpha"], "dropout": float(config.get("lora_dropout") or 0.0)}
