"""Model graders: what a judge model is asked, and how its reply becomes a score or a label.

OpenAI asks a score_model judge for structured output `{"steps": [...], "result": <float>}`
and a label_model judge for one of the labels. Tailor's judges are chat models that may or
may not honour `response_format`, so the instruction is also written into the system
message, and the reply is read leniently: a JSON object with `result` (or `score`), a JSON
number, or a bare number; for labels, the label alone (any case, quotes and a final period
ignored) or, failing that, the first label the reply names.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from service.evals.graders.models import LabelModelGrader, SamplingParams, ScoreModelGrader

_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def _fmt(value: float) -> str:
    return f"{value:g}"


def score_instruction(grader: ScoreModelGrader) -> str:
    low, high = grader.range
    return (
        f"Grade the input above with a score from {_fmt(low)} to {_fmt(high)}. "
        'Reply with a JSON object only: {"steps": [{"description": "...", "conclusion": "..."}], '
        f'"result": <a number from {_fmt(low)} to {_fmt(high)}>}}.'
    )


def label_instruction(grader: LabelModelGrader) -> str:
    labels = ", ".join(json.dumps(label) for label in grader.labels)
    return f'Classify the input above with exactly one of these labels: {labels}. Reply with a JSON object only: {{"result": <the label>}}.'


def with_instruction(messages: list[dict[str, str]], instruction: str) -> list[dict[str, str]]:
    """The instruction at the end of the first system message (or a new one first): many
    chat templates accept only one system message, and only as the first."""
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{instruction}" if out[0]["content"] else instruction
    else:
        out.insert(0, {"role": "system", "content": instruction})
    return out


def sampling(params: SamplingParams | None, schema_name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Chat-completion parameters for the judge: the grader's sampling_params and the
    structured output OpenAI uses (the caller passes them on as request fields)."""
    out: dict[str, Any] = {}
    if params is not None:
        if params.temperature is not None:
            out["temperature"] = params.temperature
        if params.top_p is not None:
            out["top_p"] = params.top_p
        if params.seed is not None:
            out["seed"] = params.seed
        if params.max_completions_tokens is not None:
            out["max_completion_tokens"] = params.max_completions_tokens
        # reasoning_effort is echoed but not sent: local chat models have no such knob.
    out["response_format"] = {"type": "json_schema", "json_schema": {"name": schema_name, "schema": schema, "strict": True}}
    return out


def score_schema(grader: ScoreModelGrader) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}},
                    "required": ["description", "conclusion"],
                    "additionalProperties": False,
                },
            },
            # The range is in the instruction and checked on the reply; not every structured
            # output backend takes minimum/maximum.
            "result": {"type": "number"},
        },
        "required": ["steps", "result"],
        "additionalProperties": False,
    }


def label_schema(grader: LabelModelGrader) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"result": {"type": "string", "enum": list(grader.labels)}},
        "required": ["result"],
        "additionalProperties": False,
    }


def _unfenced(text: str) -> str:
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    return fenced.group(1).strip() if fenced else stripped


def _json_in(text: str) -> Any:
    """The reply as JSON: all of it, or else its outermost {...}; None when neither parses."""
    body = _unfenced(text)
    for candidate in (body, body[body.find("{") : body.rfind("}") + 1] if "{" in body else ""):
        if candidate:
            try:
                return json.loads(candidate)
            except (ValueError, RecursionError):
                continue
    return None


class ParseError(ValueError):
    pass


def parse_score(text: str, grader: ScoreModelGrader) -> float:
    """The judge's score; ParseError when the reply holds none, or one outside the range."""
    value: Any = None
    body = _unfenced(text)
    if _NUMBER.match(body):
        value = float(body)
    else:
        parsed = _json_in(text)
        if isinstance(parsed, dict):
            for key in ("result", "score"):
                if key in parsed:
                    value = parsed[key]
                    break
        elif isinstance(parsed, int | float):
            value = parsed
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParseError(f"the judge's reply holds no score: {text[:200]!r}")
    low, high = grader.range
    if not low <= value <= high:
        raise ParseError(f"the judge's score {value:g} is outside the range [{low:g}, {high:g}]")
    return float(value)


def _plain(text: str) -> str:
    return text.strip().strip("\"'`").rstrip(".").strip().lower()


def parse_label(text: str, grader: LabelModelGrader) -> str:
    """The label the judge chose; ParseError when it names none of them."""
    parsed = _json_in(text)
    candidate = parsed.get("result", parsed.get("label")) if isinstance(parsed, dict) else None
    if isinstance(candidate, str):
        text_to_match = candidate
    elif isinstance(parsed, str):
        text_to_match = parsed
    else:
        text_to_match = _unfenced(text)
    wanted = _plain(text_to_match)
    for label in grader.labels:
        if _plain(label) == wanted:
            return label
    # The first label the reply names, as a word (not "positive" inside "nonpositive");
    # at one position the longest label wins ("very good" over "good").
    lowered = text_to_match.lower()
    best: tuple[int, int, str] | None = None
    for label in grader.labels:
        match = re.search(rf"(?<!\w){re.escape(label.strip().lower())}(?!\w)", lowered)
        if match and (best is None or (match.start(), -len(label)) < (best[0], best[1])):
            best = (match.start(), -len(label), label)
    if best is None:
        raise ParseError(f"the judge's reply names none of the labels: {text[:200]!r}")
    return best[2]
