"""What grading takes in and gives back: the sample, the judge's reply and the grade.

`GradeResult.errors` has exactly the keys of RunGraderResponse.metadata.errors, so the
graders API can send it as it is; `token_usage` is per judge model, as
`model_grader_token_usage_per_model` is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# RunGraderResponse.metadata.errors, in the spec's order: flags, and three details strings.
_ORDER = (
    "formula_parse_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "invalid_variable_error",
    "other_error",
    "python_grader_server_error",
    "python_grader_server_error_type",
    "python_grader_runtime_error",
    "python_grader_runtime_error_details",
    "model_grader_server_error",
    "model_grader_refusal_error",
    "model_grader_parse_error",
    "model_grader_server_error_details",
)
ERROR_DETAILS = ("python_grader_server_error_type", "python_grader_runtime_error_details", "model_grader_server_error_details")
ERROR_FLAGS = tuple(key for key in _ORDER if key not in ERROR_DETAILS)


def no_errors() -> dict[str, bool | str | None]:
    """Every error key, none set."""
    return {key: (None if key in ERROR_DETAILS else False) for key in _ORDER}


def merge_errors(into: dict[str, bool | str | None], other: dict[str, bool | str | None]) -> None:
    """A flag set in either is set; the first details string wins."""
    for key in _ORDER:
        if key in ERROR_DETAILS:
            if into.get(key) is None and other.get(key) is not None:
                into[key] = other[key]
        elif other.get(key):
            into[key] = True


@dataclass(frozen=True)
class JudgeReply:
    """What a judge model answered: its text and the usage its API reported."""

    text: str
    usage: dict[str, int] = field(default_factory=dict)
    # "stop", "length", ...: a reply cut at the token limit explains a parse error.
    finish_reason: str | None = None
    refusal: str | None = None


@dataclass
class GradeResult:
    score: float
    passed: bool
    name: str
    type: str
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: dict[str, bool | str | None] = field(default_factory=no_errors)
    token_usage: dict[str, dict[str, int]] = field(default_factory=dict)
    # Model graders: the messages the judge got and what it answered.
    judge_sample: dict[str, Any] | None = None
    # Templates that named something the item or sample does not have (rendered as '').
    missing_references: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether any error flag is set (the score is then 0, not a real grade)."""
        return any(bool(self.errors.get(key)) for key in ERROR_FLAGS)


def add_usage(total: dict[str, dict[str, int]], model: str, usage: dict[str, int]) -> None:
    """Add one judge call's usage to a per-model tally."""
    entry = total.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "invocation_count": 0})
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    entry["prompt_tokens"] += prompt
    entry["completion_tokens"] += completion
    entry["total_tokens"] += int(usage.get("total_tokens") or prompt + completion)
    entry["invocation_count"] += 1


def merge_usage(total: dict[str, dict[str, int]], other: dict[str, dict[str, int]]) -> None:
    for model, usage in other.items():
        entry = total.setdefault(model, dict.fromkeys(usage, 0))
        for key, value in usage.items():
            entry[key] = entry.get(key, 0) + value


def make_sample(
    output_text: str,
    *,
    output_tools: list[Any] | None = None,
    choices: list[Any] | None = None,
) -> dict[str, Any]:
    """The `sample` namespace for a model output: output_text, and output_json when the
    text is valid JSON (as OpenAI's graders API does for `model_sample`)."""
    sample: dict[str, Any] = {"output_text": output_text}
    try:
        sample["output_json"] = json.loads(output_text)
    except (ValueError, RecursionError):
        pass
    if output_tools is not None:
        sample["output_tools"] = output_tools
    if choices is not None:
        sample["choices"] = choices
    return sample
