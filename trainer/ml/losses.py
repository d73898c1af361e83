"""Forward passes over packed batches, and the supervised and DPO losses.

Logits are computed only where a token carries a loss (assistant tokens): the vocabulary
projection is a large share of a small model's compute, and of a big model's memory. For
many such tokens the projection runs in chunks under activation checkpointing, so the
full [tokens x vocabulary] logits never sit in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer.ml.chat_tokens import IGNORE
from trainer.ml.packing import PackedBatch

LOGIT_CHUNK = 4096


@dataclass
class TokenScores:
    logprobs: torch.Tensor  # [n_targets] log p(target) under the model
    correct: torch.Tensor  # [n_targets] argmax == target
    segment: torch.Tensor  # [n_targets] which segment of the batch each target is in


def causal_lm(model: Any) -> Any:
    """The transformers model under a peft wrapper (LoRA layers already injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _score_chunk(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    logprobs = -F.cross_entropy(logits, targets, reduction="none")
    return logprobs, logits.argmax(-1) == targets


def score_targets(model: Any, batch: PackedBatch) -> TokenScores:
    """log p of every target token of a packed batch (block-diagonal attention, see packing.py)."""
    lm = causal_lm(model)
    out = lm.get_decoder()(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=None,  # None + position ids: transformers builds the packed mask
        use_cache=False,
    )
    mask = batch.targets != IGNORE
    hidden = out.last_hidden_state[mask]
    targets = batch.targets[mask]
    head = lm.get_output_embeddings()
    if hidden.shape[0] <= LOGIT_CHUNK or not torch.is_grad_enabled():
        pieces = [_score_chunk(h, t, head) for h, t in zip(hidden.split(LOGIT_CHUNK), targets.split(LOGIT_CHUNK), strict=True)]
    else:
        pieces = [
            checkpoint(_score_chunk, h, t, head, use_reentrant=False)
            for h, t in zip(hidden.split(LOGIT_CHUNK), targets.split(LOGIT_CHUNK), strict=True)
        ]
    return TokenScores(
        logprobs=torch.cat([p[0] for p in pieces]),
        correct=torch.cat([p[1] for p in pieces]),
        segment=batch.segment_ids[mask],
    )


def sequence_logprobs(scores: TokenScores, n_segments: int) -> torch.Tensor:
    """Sum of target log-probs per segment: a reply's log-likelihood given its prompt."""
    sums = torch.zeros(n_segments, dtype=scores.logprobs.dtype, device=scores.logprobs.device)
    return sums.index_add(0, scores.segment, scores.logprobs)


def pair_logprobs(batch: PackedBatch, per_segment: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """unit -> (preferred, non-preferred) log-likelihoods."""
    found: dict[int, dict[int, torch.Tensor]] = {}
    for i, (unit, part) in enumerate(batch.segments):
        found.setdefault(unit, {})[part] = per_segment[i]
    return {unit: (parts[0], parts[1]) for unit, parts in found.items()}


@dataclass
class DpoTerms:
    loss: torch.Tensor  # [pairs]
    chosen_reward: torch.Tensor  # beta * (log pi - log ref) of the preferred reply
    rejected_reward: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DpoTerms:
    """The DPO objective (Rafailov et al. 2023): -log sigmoid(beta * margin of log-ratios)."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return DpoTerms(loss=-F.logsigmoid(chosen - rejected), chosen_reward=chosen.detach(), rejected_reward=rejected.detach())
