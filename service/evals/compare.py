"""Models side by side on a chat-format test file: the eval `tailor evals compare` (and a
fine-tuning job's test file) creates, and the table of what came back.

Each test example is a training-format conversation; its last assistant message is the
reference answer and what comes before it the prompt. The default criteria are an exact
check against the reference and a fuzzy similarity, the two a reader checks first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.evals.data import BadRow

ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"messages": {"type": "array"}, "reference": {"type": "string"}},
    "required": ["messages", "reference"],
}
FUZZY_THRESHOLD = 0.8


def default_criteria() -> list[dict[str, Any]]:
    return [
        {
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_text}}",
            "reference": "{{item.reference}}",
            "operation": "eq",
        },
        {
            "type": "text_similarity",
            "name": "fuzzy",
            "input": "{{sample.output_text}}",
            "reference": "{{item.reference}}",
            "evaluation_metric": "fuzzy_match",
            "pass_threshold": FUZZY_THRESHOLD,
        },
    ]


def chat_items(examples: Iterable[tuple[int, Any]]) -> list[dict[str, Any]]:
    """(line, training-format example) → eval rows `{"item": {"messages", "reference"}}`."""
    rows = []
    for line, example in examples:
        messages = example.get("messages") if isinstance(example, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise BadRow(line, "expected a chat example with a `messages` list")
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None or not isinstance(messages[last].get("content"), str) or last == 0:
            raise BadRow(line, "the example has no assistant answer after a prompt to compare with")
        prompt = [{"role": m["role"], "content": m.get("content") or ""} for m in messages[:last]]
        rows.append({"item": {"messages": prompt, "reference": messages[last]["content"].strip()}})
    return rows


def completions_source(model: str, source: dict[str, Any], max_tokens: int, prompt: str = "item.messages") -> dict[str, Any]:
    """Greedy generation on the test prompts, so two runs differ only by their model."""
    return {
        "type": "completions",
        "model": model,
        "input_messages": {"type": "item_reference", "item_reference": prompt},
        "sampling_params": {"temperature": 0, "max_completion_tokens": max_tokens, "seed": 0},
        "source": source,
    }


@dataclass
class ModelResult:
    model: str
    total: int
    passed_by_criterion: dict[str, int]
    # item index → (passed every criterion, the model's answer)
    items: dict[int, tuple[bool, str]] = field(default_factory=dict)


def criterion_name(result_name: str, names: Sequence[str]) -> str:
    """An output item's result is named by the criterion's id, `{name}-{uuid}`."""
    return next((n for n in names if result_name.startswith(n + "-") or result_name == n), result_name)


def summarize(model: str, output_items: Iterable[Any], names: Sequence[str]) -> ModelResult:
    result = ModelResult(model, 0, dict.fromkeys(names, 0))
    for item in output_items:
        result.total += 1
        for r in item["results"]:
            if r.get("passed"):
                name = criterion_name(r["name"], names)
                result.passed_by_criterion[name] = result.passed_by_criterion.get(name, 0) + 1
        output = item["sample"].get("output") or [{}]
        answer = output[0].get("content") or ""
        result.items[item["datasource_item_id"]] = (item["status"] == "pass", answer)
    return result


def table(results: Sequence[ModelResult], names: Sequence[str]) -> str:
    """Pass rate per criterion (rows) per model (columns)."""
    header = ["criterion", *(r.model for r in results)]
    rows = [
        [
            name,
            *(
                f"{r.passed_by_criterion.get(name, 0)}/{r.total} ({_percent(r.passed_by_criterion.get(name, 0), r.total)})"
                for r in results
            ),
        ]
        for name in names
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def differing(results: Sequence[ModelResult]) -> list[int]:
    """Indexes of the items some models passed and others did not."""
    indexes = set().union(*(r.items for r in results)) if results else set()
    return sorted(i for i in indexes if len({r.items.get(i, (False, ""))[0] for r in results}) > 1)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"
