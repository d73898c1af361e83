"""Packing: several examples per row, with no attention across example boundaries.

Each example's position ids restart at 0 inside its row, and the model is called with
`attention_mask=None` and no KV cache. transformers' mask builder
(`masking_utils.find_packed_sequence_indices`) then reads the example boundaries from the
position ids and builds a block-diagonal causal mask for sdpa and eager attention (flash
attention reads the same position ids as variable-length sequences). The test
`test_packed_logits_equal_unpacked` checks this against the installed version.

Targets are shifted per example before packing (target[t] is the token at t+1 of the same
example), so no example is ever trained to predict the first token of the next one.

A step's examples are grouped into micro-batches by a token budget, longest first, and
each micro-batch's examples are packed first-fit-decreasing into rows: mixed lengths cost
only the few pad tokens at the end of each row, not padding to the longest example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.ml.chat_tokens import IGNORE, Tokenized


@dataclass
class Segment:
    """One tokenized sequence placed in a row; `unit`/`part` say which example it is."""

    input_ids: list[int]
    targets: list[int]
    unit: int  # index of the example in the step
    part: int = 0  # DPO: 0 preferred, 1 non-preferred

    def __len__(self) -> int:
        return len(self.input_ids)


def segment(tok: Tokenized, unit: int, part: int = 0) -> Segment:
    return Segment(input_ids=tok.input_ids, targets=[*tok.labels[1:], IGNORE], unit=unit, part=part)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [rows, length]
    position_ids: torch.Tensor  # restart at 0 for every segment (and for the padding)
    targets: torch.Tensor  # next-token target, IGNORE where not trained
    segment_ids: torch.Tensor  # index into `segments`, -1 on padding
    segments: list[tuple[int, int]]  # (unit, part) of each segment
    n_tokens: int  # real (non-pad) tokens
    n_targets: int  # tokens that carry a loss

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            input_ids=self.input_ids.to(device),
            position_ids=self.position_ids.to(device),
            targets=self.targets.to(device),
            segment_ids=self.segment_ids.to(device),
            segments=self.segments,
            n_tokens=self.n_tokens,
            n_targets=self.n_targets,
        )


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of indices whose lengths sum to at most `capacity` (an item larger than it gets
    a bin of its own). Longest first, so short items fill the gaps the long ones leave."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def micro_batches(unit_tokens: list[int], token_budget: int) -> list[list[int]]:
    """Group the step's units (examples; a DPO pair is one unit) by the token budget."""
    return first_fit_decreasing(unit_tokens, token_budget)


def collate(segments: list[Segment], row_len: int, pad_id: int) -> PackedBatch:
    """Pack segments into rows of at most max(row_len, longest segment) tokens."""
    capacity = max(row_len, max(len(s) for s in segments))
    rows = first_fit_decreasing([len(s) for s in segments], capacity)
    width = max(sum(len(segments[i]) for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE, dtype=torch.long)
    segment_ids = torch.full(shape, -1, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            s = segments[i]
            n = len(s)
            input_ids[r, at : at + n] = torch.tensor(s.input_ids)
            targets[r, at : at + n] = torch.tensor(s.targets)
            segment_ids[r, at : at + n] = i
            position_ids[r, at : at + n] = torch.arange(n)
            at += n
        # Padding is its own segment (positions from 0), so it never mixes with real tokens.
        position_ids[r, at:] = torch.arange(width - at)
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        targets=targets,
        segment_ids=segment_ids,
        segments=[(s.unit, s.part) for s in segments],
        n_tokens=sum(len(s) for s in segments),
        n_targets=int((targets != IGNORE).sum()),
    )
