"""Quality of Tailor's "auto" defaults against a plain peft loop with well-chosen settings.

Each task (bench/quality_tasks.py: JSON extraction, classification, a house style) has
train and test splits; both methods train a LoRA on the same base model and the same
tokenized examples, and are scored by exact match of the greedy answer on the unseen test
split. A 50-question general-knowledge probe (service/data/general_knowledge.jsonl, the
same "answer contains the reference" check a job's evaluation uses) is asked of the base
and of every tuned model: an answer the base knew and the tuned model lost is forgetting.

- tailor: `TrainConfig()` with every field "auto", trained the way a job trains (the
  validation split, early stopping and best checkpoint included: trainer/child.py's path);
- peft: a hand-written loop as the usual recipe has it: rank 16, alpha 32, every linear
  projection, AdamW at 5e-4, linear decay, 2 epochs, batch 8, padded batches, loss on the
  assistant tokens.

    .venv/bin/python bench/quality.py                       # all tasks, ~30 min on 2 CPU cores
    .venv/bin/python bench/quality.py --tasks style --train 100 --test 30

Figures: bench/README.md ("Quality of the defaults").
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import quality_tasks

PEFT_SETTINGS = {"rank": 16, "alpha": 32, "learning_rate": 5e-4, "epochs": 2, "batch_size": 8}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load_base(model_dir: Path) -> Any:
    from trainer.ml.base_model import load_for_training

    return load_for_training(model_dir, "float32", "cpu")


# --- the two ways to train ---------------------------------------------------------------


def worker_replay(model_dir: Path, tokenizer: Any) -> Any:
    """A worker's replay source: the base model's answers cached beside the model (the first job generates them)."""
    from trainer.ml.train import context_length, replay_source

    return replay_source(tokenizer, context_length(model_dir), model_dir, model_dir.parent)


def train_tailor(model_dir: Path, train_path: Path, out: Path, seed: int, **options: Any) -> tuple[Path, dict[str, Any]]:
    """As trainer/child.py trains a job with no validation file and every field "auto"; the
    adapter's directory (loaded for scoring outside the timed part, as a job serves it later)."""
    from trainer.ml.base_model import load_tokenizer
    from trainer.ml.config import TrainConfig, resolve_auto, validation_count
    from trainer.ml.data import load_dataset, split_validation
    from trainer.ml.train import context_length, train

    config = TrainConfig(seed=seed, device="cpu", **options)
    tokenizer = load_tokenizer(model_dir)
    data = load_dataset(train_path, tokenizer, "supervised", context_length(model_dir))
    valid = None
    if held := validation_count(len(data), config.validation_split):
        data, valid = split_validation(data, held, seed)
    resolved = resolve_auto(config, len(data))
    result = train(config, model_dir, data, out, valid, replay=worker_replay(model_dir, tokenizer))
    assert result.adapter_dir is not None
    info = {
        "n_epochs": resolved.n_epochs,
        "batch_size": resolved.batch_size,
        "learning_rate": resolved.learning_rate,
        "steps": result.step,
        "total_steps": result.total_steps,
        "best_step": result.best_step or result.step,
        "stopped_early": result.stopped_early,
        "held_out": len(valid) if valid else 0,
    }
    return result.adapter_dir, info


def load_tuned(model_dir: Path, adapter_dir: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(model_dir), str(adapter_dir))


def train_peft(model_dir: Path, train_path: Path, seed: int) -> tuple[Any, dict[str, Any]]:
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.ml.base_model import load_tokenizer
    from trainer.ml.data import load_dataset
    from trainer.ml.lora import lora_targets
    from trainer.ml.train import context_length

    s = PEFT_SETTINGS
    tokenizer = load_tokenizer(model_dir)
    data = load_dataset(train_path, tokenizer, "supervised", context_length(model_dir))
    torch.manual_seed(seed)
    base = load_base(model_dir)
    lora = LoraConfig(r=s["rank"], lora_alpha=s["alpha"], lora_dropout=0.05, target_modules=lora_targets(base))
    model = get_peft_model(base, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s["learning_rate"])
    steps_per_epoch = math.ceil(len(data) / s["batch_size"])
    total = steps_per_epoch * s["epochs"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    order = list(range(len(data)))
    rng = random.Random(seed)
    for _ in range(s["epochs"]):
        rng.shuffle(order)
        for k in range(steps_per_epoch):
            batch = [data.examples[i].tokens for i in order[k * s["batch_size"] : (k + 1) * s["batch_size"]]]
            width = max(len(t.input_ids) for t in batch)
            ids = torch.tensor([t.input_ids + [pad] * (width - len(t.input_ids)) for t in batch])
            labels = torch.tensor([t.labels + [-100] * (width - len(t.labels)) for t in batch])
            mask = torch.tensor([[1] * len(t.input_ids) + [0] * (width - len(t.input_ids)) for t in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    info = {"n_epochs": s["epochs"], "batch_size": s["batch_size"], "learning_rate": s["learning_rate"], "steps": total}
    return model, info


# --- scoring ------------------------------------------------------------------------------


def answers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
    """Greedy answers, finished or not (the replay's generation, in batches of 16)."""
    from trainer.ml.replay import greedy_answers

    return [text for text, _ in greedy_answers(model, tokenizer, prompts, max_new_tokens, batch=16)]


def exact_match(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int) -> float:
    prompts = [r["messages"][:-1] for r in rows]
    got = answers(model, tokenizer, prompts, max_new_tokens)
    return sum(g == r["messages"][-1]["content"].strip() for g, r in zip(got, rows, strict=True)) / len(rows)


def probe(model: Any, tokenizer: Any) -> set[int]:
    """Indices of the general-knowledge questions answered (reference contained, any case)."""
    rows = [json.loads(line) for line in (REPO / "service/data/general_knowledge.jsonl").read_text().splitlines() if line]
    got = answers(model, tokenizer, [[{"role": "user", "content": r["question"]}] for r in rows], 32)
    return {i for i, (g, r) in enumerate(zip(got, rows, strict=True)) if r["answer"].lower() in g.lower()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(quality_tasks.TASKS), choices=list(quality_tasks.TASKS))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["tailor", "peft"],
        choices=["tailor", "tailor-noreplay", "peft"],
        help="tailor-noreplay: the defaults with training.replay off (what replay buys)",
    )
    parser.add_argument("--train", type=int, default=120, help="training examples per task")
    parser.add_argument("--test", type=int, default=100, help="test examples per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=str(REPO / ".tailor" / "models"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    from service.core.registry import DEFAULT_BASE_MODELS
    from trainer.ml.base_model import load_tokenizer, materialize

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_dir = materialize(DEFAULT_BASE_MODELS[0], Path(args.cache_dir))
    tokenizer = load_tokenizer(model_dir)
    base = load_base(model_dir)
    base_known = probe(base, tokenizer)
    if "tailor" in args.methods:  # a worker's replay cache is warm after its first job
        worker_replay(model_dir, tokenizer)(base)
    del base
    print(f"base model: {model_dir.name}; general knowledge {len(base_known)}/50", flush=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            train_rows, test_rows = quality_tasks.generate(task, args.train, args.test, args.seed)
            train_path = write_jsonl(Path(tmp) / f"{task}.jsonl", train_rows)
            limit = quality_tasks.max_new_tokens(task)
            base_score = exact_match(load_base(model_dir), tokenizer, test_rows, limit)
            results.append({"task": task, "method": "base", "exact": base_score, "probe": len(base_known), "lost": 0})
            print(f"{task:15s} base   exact {100 * base_score:5.1f}%", flush=True)
            for method in args.methods:
                started = time.perf_counter()
                if method.startswith("tailor"):
                    options = {"replay": False} if method == "tailor-noreplay" else {}
                    adapter, info = train_tailor(model_dir, train_path, Path(tmp) / f"{task}-{method}", args.seed, **options)
                    seconds = time.perf_counter() - started
                    model = load_tuned(model_dir, adapter)
                else:
                    model, info = train_peft(model_dir, train_path, args.seed)
                    seconds = time.perf_counter() - started
                score = exact_match(model, tokenizer, test_rows, limit)
                known = probe(model, tokenizer)
                row = {"task": task, "method": method, "exact": score, "probe": len(known),
                       "lost": len(base_known - known), "train_seconds": round(seconds, 1), **info}  # fmt: skip
                results.append(row)
                print(
                    f"{task:15s} {method:15s} exact {100 * score:5.1f}%  probe {len(known)}/50 (lost {row['lost']})  "
                    f"train {seconds:6.1f} s  {info}",
                    flush=True,
                )
                del model
    print("\n| task | method | exact match | probe (lost) | train s | epochs | batch | lr | steps |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if r["method"] == "base":
            print(f"| {r['task']} | base | {100 * r['exact']:.1f}% | {r['probe']}/50 | | | | | |")
            continue
        steps = f"{r['steps']}" + (f" (best {r['best_step']})" if r.get("best_step") not in (None, r["steps"]) else "")
        print(
            f"| {r['task']} | {r['method']} | {100 * r['exact']:.1f}% | {r['probe']}/50 ({r['lost']}) | "
            f"{r['train_seconds']} | {r['n_epochs']} | {r['batch_size']} | {r['learning_rate']:.2g} | {steps} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
