"""Replay: the base model's own answers to general prompts, mixed into every training step so
the tuned model keeps behaving like its base outside the user's task.

Without it, a small task file (one system prompt, one answer format) teaches the model to
answer everything in that format: bench/quality.py measured a classification tune losing
most of the general-knowledge answers its base had right. The answers are generated
greedily by the base model before its adapter exists, so they are what it would have said;
only answers it finished are kept (a cut-off answer would teach stopping mid-sentence).
The prompts (service/data/replay_prompts.jsonl) share nothing with the general-knowledge
probe that measures forgetting. Answers are cached per base model on the worker's disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from trainer.ml.chat_tokens import ChatRenderer
from trainer.ml.data import Dataset, SequenceExample
from trainer.ml.validation import Message

log = logging.getLogger("tailor.replay")

MAX_NEW_TOKENS = 64
GENERATION_BATCH = 64  # every prompt in one batch: a CPU is far faster per token batched


def prompts() -> list[str]:
    text = resources.files("service").joinpath("data/replay_prompts.jsonl").read_text()
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def greedy_answers(
    model: Any, tokenizer: Any, chats: list[list[dict[str, str]]], max_new_tokens: int, batch: int = GENERATION_BATCH
) -> list[tuple[str, bool]]:
    """Each chat's greedy answer from `model` and whether it finished (an end-of-turn token
    within `max_new_tokens`), in left-padded batches."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    stops = {t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int)}
    answers: list[tuple[str, bool]] = []
    try:
        for k in range(0, len(chats), batch):
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats[k : k + batch]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                text = tokenizer.decode(row, skip_special_tokens=True).strip()
                answers.append((text, any(t in stops for t in row)))
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
        model.train(was_training)
    return answers


def base_answers(model: Any, tokenizer: Any, questions: list[str]) -> list[str | None]:
    """Greedy answers of `model` (None where it did not finish within MAX_NEW_TOKENS)."""
    chats = [[{"role": "user", "content": q}] for q in questions]
    return [text if finished else None for text, finished in greedy_answers(model, tokenizer, chats, MAX_NEW_TOKENS)]


def _cache_file(cache_dir: Path, model_path: Path, questions: list[str]) -> Path:
    stamp = (model_path / "config.json").stat().st_mtime_ns if (model_path / "config.json").exists() else 0
    key = hashlib.sha256(json.dumps([str(model_path.resolve()), stamp, MAX_NEW_TOKENS, questions]).encode()).hexdigest()
    return cache_dir / "replay" / f"{model_path.name}-{key[:16]}.json"


def cached_answers(
    model: Any, tokenizer: Any, questions: list[str], model_path: Path, cache_dir: Path | None
) -> list[str | None]:
    cache = _cache_file(cache_dir, model_path, questions) if cache_dir else None
    if cache is not None and cache.is_file():
        return list(json.loads(cache.read_text()))
    answers = base_answers(model, tokenizer, questions)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(answers))
            tmp.replace(cache)
        except OSError as exc:  # a read-only cache only costs the next job the generation
            log.warning("could not cache replay answers at %s: %s", cache, exc)
    return answers


def replay_dataset(model: Any, tokenizer: Any, max_seq_len: int, model_path: Path, cache_dir: Path | None = None) -> Dataset:
    """The base model's finished answers as supervised examples (lines -1, -2, …: never the user's)."""
    renderer = ChatRenderer(tokenizer)
    questions = prompts()
    data = Dataset(method="supervised", examples=[], max_seq_len=max_seq_len)
    answers = cached_answers(model, tokenizer, questions, model_path, cache_dir)
    for i, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        if not answer:
            continue
        tokens = renderer.tokenize([Message("user", question), Message("assistant", answer)], [False, True], None)
        if 0 < len(tokens.input_ids) <= max_seq_len and tokens.n_trained:
            data.examples.append(SequenceExample(line=-(i + 1), tokens=tokens))
    return data
