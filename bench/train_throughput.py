"""Training throughput: Tailor's loop against a plain transformers Trainer + peft baseline.

Both train the same LoRA (rank 16, all linear projections) on the same base model and the
same tokenized examples of mixed lengths, one epoch, the same batch size in examples. The
baseline pads each batch to its longest example (transformers' usual collator); Tailor
packs each step's examples into rows with block-diagonal attention and computes logits
only on trained tokens. Each method runs in its own process (clean peak memory); the
figure is real (non-padding) tokens per second over the timed steps.

    .venv/bin/python bench/train_throughput.py                 # CPU, SmolLM2-135M from its GGUF
    .venv/bin/python bench/train_throughput.py --gpu           # Llama-3.1-8B-shaped random model, bf16, seq 2048

See bench/README.md for measured figures.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = [
    "the",
    "model",
    "answers",
    "questions",
    "about",
    "history",
    "science",
    "cooking",
    "travel",
    "and",
    "code",
    "with",
    "short",
    "clear",
    "sentences",
    "it",
    "explains",
    "each",
    "step",
    "gives",
    "examples",
    "and",
    "checks",
    "the",
    "result",
    "before",
    "replying",
    "when",
    "a",
    "user",
    "asks",
    "for",
    "help",
    "with",
    "a",
    "function",
    "the",
    "assistant",
    "reads",
    "the",
    "error",
    "message",
    "finds",
    "the",
    "line",
    "and",
    "suggests",
    "a",
    "fix",
    "that",
    "keeps",
    "the",
    "tests",
    "passing",
]


def make_rows(n: int, max_tokens: int, seed: int) -> list[dict[str, Any]]:
    """Chat examples with a heavy-tailed length mix (most short, a few long), like real
    chat data; about 1.3 tokens per word for these words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens = int(min(max_tokens * 0.9, max(24, rng.lognormvariate(math.log(max_tokens / 5), 0.8))))
        words = max(4, int(tokens / 1.3))
        user = max(2, int(words * rng.uniform(0.2, 0.6)))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(user))},
                    {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(words - user))},
                ]
            }
        )
    return rows


def peak_memory_mib(gpu: bool) -> float:
    if gpu:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def random_llama_8b() -> Any:
    """Llama-3.1-8B's shapes with random bf16 weights, built on the GPU (no download)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=128_256,
        hidden_size=4096,
        intermediate_size=14_336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=0,
        use_cache=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")


def load_base(args: argparse.Namespace) -> Any:
    from trainer.ml.base_model import load_for_training

    if args.gpu:
        return random_llama_8b()
    return load_for_training(Path(args.model_dir), "float32", "cpu")


def train_config(args: argparse.Namespace) -> Any:
    from trainer.ml.config import TrainConfig

    return TrainConfig(
        method="supervised",
        n_epochs=1,
        batch_size=args.batch_size,
        learning_rate_multiplier=1.0,
        seed=args.seed,
        device="cuda" if args.gpu else "cpu",
        dtype="bfloat16" if args.gpu else "float32",
        gradient_checkpointing=args.gpu,
        max_seq_len=args.max_len,
    )


def run_tailor(args: argparse.Namespace, data: Any) -> dict[str, float]:
    from trainer.ml.train import StepMetrics, train

    marks: list[tuple[float, float, int]] = []  # (wall, CPU time, tokens so far): start, then each step

    def poll() -> None:
        if not marks:
            marks.append((time.perf_counter(), time.process_time(), 0))

    def step(m: StepMetrics) -> None:
        marks.append((time.perf_counter(), time.process_time(), m.trained_tokens))

    with tempfile.TemporaryDirectory() as out:
        train(
            train_config(args),
            Path(args.model_dir),
            data,
            Path(out),
            on_step=step,
            should_stop=poll,
            base_model=load_base(args),
        )
    return timed(marks, args.warmup_steps, args.gpu)


def timed(marks: list[tuple[float, float, int]], warmup: int, gpu: bool) -> dict[str, float]:
    """Tokens/s after the warm-up steps (first calls compile kernels, fill allocators).
    Also per CPU-second of this process: steadier than wall time on a shared machine."""
    (t0, c0, n0), (t1, c1, n1) = marks[warmup], marks[-1]
    return {
        "tokens": n1 - n0,
        "seconds": t1 - t0,
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "tokens_per_cpu_s": (n1 - n0) / max(1e-9, c1 - c0),
        "peak_mib": peak_memory_mib(gpu),
        "steps": len(marks) - 1 - warmup,
    }


class PadToLongest:
    """transformers' usual recipe: pad every sequence to the longest in its batch. Records
    the real tokens of each batch it builds, in order."""

    def __init__(self) -> None:
        self.batch_tokens: list[int] = []

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        self.batch_tokens.append(sum(len(b["input_ids"]) for b in batch))

        def pad(seq: list[int], value: int) -> list[int]:
            return seq + [value] * (width - len(seq))

        return {
            "input_ids": torch.tensor([pad(b["input_ids"], 0) for b in batch]),
            "labels": torch.tensor([pad(b["labels"], -100) for b in batch]),
            "attention_mask": torch.tensor([pad([1] * len(b["input_ids"]), 0) for b in batch]),
        }


def run_baseline(args: argparse.Namespace, data: Any) -> dict[str, float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainer.ml.config import resolve_auto
    from trainer.ml.lora import build_lora_model

    config = train_config(args)
    model = build_lora_model(load_base(args), config)  # the same LoRA (and checkpointing) as Tailor's
    rows = [{"input_ids": e.tokens.input_ids, "labels": e.tokens.labels} for e in data.examples]
    collate = PadToLongest()
    marks: list[tuple[float, float, int]] = []

    class Timer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if not marks:
                marks.append((time.perf_counter(), time.process_time(), 0))

        def on_step_end(self, *a: Any, **k: Any) -> None:
            # The data loader runs one batch ahead, so count the batches of the steps done.
            done = sum(collate.batch_tokens[: len(marks)])
            marks.append((time.perf_counter(), time.process_time(), done))

    steps = math.ceil(len(rows) / args.batch_size)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, num_train_epochs=1,
            learning_rate=resolve_auto(config, len(rows)).learning_rate, lr_scheduler_type="linear",
            warmup_steps=math.ceil(0.03 * steps), max_grad_norm=1.0, logging_strategy="no", save_strategy="no",
            report_to=[], use_cpu=not args.gpu, bf16=args.gpu, seed=args.seed, remove_unused_columns=False,
            dataloader_num_workers=0,
        )  # fmt: skip
        Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Timer()]).train()
    return timed(marks, args.warmup_steps, args.gpu)


def child(method: str, args: argparse.Namespace, data_path: str, queue: Any) -> None:
    import torch

    from trainer.ml.base_model import load_tokenizer
    from trainer.ml.data import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(Path(data_path), load_tokenizer(Path(args.model_dir)), "supervised", args.max_len)
    queue.put((run_tailor if method == "tailor" else run_baseline)(args, data))


def describe_data(args: argparse.Namespace, data_path: Path) -> str:
    from trainer.ml.base_model import load_tokenizer
    from trainer.ml.data import load_dataset

    data = load_dataset(data_path, load_tokenizer(Path(args.model_dir)), "supervised", args.max_len)
    lengths = [e.n_tokens for e in data.examples]
    return (
        f"{len(lengths)} examples, {sum(lengths):,} tokens, lengths {min(lengths)}..{max(lengths)} "
        f"(median {int(statistics.median(lengths))})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="Llama-3.1-8B-shaped random model, bf16, CUDA, seq 2048")
    parser.add_argument("--examples", type=int, default=None, help="default: 64 (CPU), 256 (GPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    parser.add_argument("--max-len", type=int, default=None, help="longest example; default 768 (CPU), 2048 (GPU)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps left out of the timing")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method, alternating; best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", default=None, help="HF directory whose tokenizer (and, on CPU, weights) to use")
    parser.add_argument("--cache-dir", default=str(REPO / ".tailor" / "models"), help="where SmolLM2 is materialized")
    parser.add_argument("--only", choices=["tailor", "baseline"], default=None)
    args = parser.parse_args()
    args.examples = args.examples or (256 if args.gpu else 64)
    args.max_len = args.max_len or (2048 if args.gpu else 768)
    if args.model_dir is None:
        from service.core.registry import DEFAULT_BASE_MODELS
        from trainer.ml.base_model import materialize

        args.model_dir = str(materialize(DEFAULT_BASE_MODELS[0], Path(args.cache_dir)))
    import json

    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "train.jsonl"
        data_path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.examples, args.max_len, args.seed)))
        print(f"model: {'random Llama-3.1-8B shape, bf16, cuda' if args.gpu else args.model_dir + ', fp32, cpu'}")
        print(f"data: {describe_data(args, data_path)}; batch {args.batch_size} examples, 1 epoch", flush=True)
        ctx = multiprocessing.get_context("spawn")
        runs: dict[str, list[dict[str, float]]] = {}
        # Alternate the methods so a burst of load from other processes hits both alike;
        # the best of the repeats is each method's figure.
        for _ in range(args.repeats):
            for method in [m for m in ("tailor", "baseline") if args.only in (None, m)]:
                queue = ctx.Queue()
                proc = ctx.Process(target=child, args=(method, args, str(data_path), queue))
                proc.start()
                runs.setdefault(method, []).append(wait_for(proc, queue, method))
                print(f"  {method}: {runs[method][-1]['tokens_per_s']:.1f} tokens/s", flush=True)
    report({m: max(r, key=lambda x: x["tokens_per_s"]) for m, r in runs.items()}, args.gpu)


def wait_for(proc: Any, queue: Any, method: str) -> dict[str, float]:
    import queue as queue_module

    while True:
        try:
            result: dict[str, float] = queue.get(timeout=1.0)
            proc.join()
            return result
        except queue_module.Empty:
            if not proc.is_alive():
                raise SystemExit(f"{method}: the benchmark process died (exit code {proc.exitcode})") from None


def report(results: dict[str, dict[str, float]], gpu: bool) -> None:
    memory = "peak GPU MiB" if gpu else "peak RSS MiB"
    print(f"{'method':<10}{'tokens/s':>10}{'tok/cpu-s':>11}{'tokens':>9}{'seconds':>9}{'steps':>7}{memory:>15}")
    for name, r in results.items():
        print(
            f"{name:<10}{r['tokens_per_s']:>10.1f}{r['tokens_per_cpu_s']:>11.1f}{int(r['tokens']):>9}"
            f"{r['seconds']:>9.1f}{int(r['steps']):>7}{r['peak_mib']:>15.0f}"
        )
    if len(results) == 2:
        print(f"ratio tailor/baseline: {results['tailor']['tokens_per_s'] / results['baseline']['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
