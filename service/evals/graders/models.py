"""The grader objects of OpenAI's Evals and graders APIs, as strict pydantic models.

One model per grader `type` (components/schemas Grader* and EvalGrader* of the spec), a
discriminated union over them, `parse_grader` that turns a request's JSON into one with a 400
naming the exact field, and `grader_to_dict` that echoes it back in the spec's shape.
Model-grader inputs take both message forms OpenAI accepts (`{"role", "content": str}` and
the EvalItem form); `eval_item` turns either into the EvalItem form that OpenAI echoes.
"""

from __future__ import annotations

import ast
import keyword
import math
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from service.core.errors import InvalidRequest
from service.evals.graders import formula

MAX_PYTHON_SOURCE_CHARS = 256 * 1024
MAX_LABELS = 256


class _Strict(BaseModel):
    # Strict: no "1" for a number, no true for a string; unknown fields are an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# --- model inputs (EvalItem and the easy form) --------------------------------------------

Role = Literal["user", "assistant", "system", "developer"]


class InputTextPart(_Strict):
    type: Literal["input_text"]
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None  # accepted as the spec has it; unused


class OutputTextPart(_Strict):
    type: Literal["output_text"]
    text: str


ContentPart = Annotated[InputTextPart | OutputTextPart, Field(discriminator="type")]


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text-content"
    if isinstance(value, list):
        return "content-parts"
    if isinstance(value, dict | InputTextPart | OutputTextPart):
        return "content-part"
    return None


Content = Annotated[
    Annotated[str, Tag("text-content")]
    | Annotated[ContentPart, Tag("content-part")]
    | Annotated[list[ContentPart], Tag("content-parts")],
    Discriminator(
        _content_kind,
        custom_error_type="invalid_content",
        custom_error_message="content must be a string, a content part ({'type': 'input_text', 'text': ...}) or a list of them",
    ),
]


class InputMessage(_Strict):
    """One message of a model grader's `input`: the EvalItem form, of which the easy
    `{"role", "content": str}` form is the special case without `type`."""

    type: Literal["message"] = "message"
    role: Role
    content: Content


def content_text(content: str | InputTextPart | OutputTextPart | list[InputTextPart | OutputTextPart]) -> str:
    """The text of a message's content; the parts of a list joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.text for part in content)
    return content.text


def eval_item(message: InputMessage) -> dict[str, Any]:
    """The EvalItem form OpenAI echoes: a string content becomes an `input_text` part."""
    content = message.content
    echoed: Any
    if isinstance(content, str):
        echoed = {"type": "input_text", "text": content}
    elif isinstance(content, list):
        echoed = [part.model_dump(exclude_none=True) for part in content]
    else:
        echoed = content.model_dump(exclude_none=True)
    return {"type": "message", "role": message.role, "content": echoed}


_MESSAGES = TypeAdapter(list[InputMessage])


def parse_messages(obj: Any, *, param: str) -> list[InputMessage]:
    """A list of input messages (e.g. a data source's `input_messages.template`), or a 400."""
    try:
        return _MESSAGES.validate_python(obj)
    except ValidationError as exc:
        raise _invalid(exc, param) from None


# --- graders ------------------------------------------------------------------------------

Metric = Literal[
    "cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
]


class StringCheckGrader(_Strict):
    type: Literal["string_check"]
    name: str
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_Strict):
    type: Literal["text_similarity"]
    name: str
    input: str
    reference: str
    evaluation_metric: Metric
    pass_threshold: float | None = None


class SamplingParams(_Strict):
    seed: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    max_completions_tokens: int | None = Field(None, ge=1)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None


class ScoreModelGrader(_Strict):
    type: Literal["score_model"]
    name: str
    model: str
    input: list[InputMessage]
    range: list[float] = Field(default_factory=lambda: [0.0, 1.0])
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = None


class LabelModelGrader(_Strict):
    type: Literal["label_model"]
    name: str
    model: str
    input: list[InputMessage]
    labels: list[str]
    passing_labels: list[str]


class PythonGrader(_Strict):
    type: Literal["python"]
    name: str
    source: str
    image_tag: str | None = None  # echoed; every grade runs on this server's own Python
    pass_threshold: float | None = None


SubGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
    Field(discriminator="type"),
]


def _graders_kind(value: Any) -> str | None:
    # One grader has a string `type`; a dict of graders keyed by name has grader objects as values.
    if isinstance(value, dict):
        return "one-grader" if isinstance(value.get("type"), str) else "named-graders"
    if isinstance(value, BaseModel):
        return "one-grader"
    return None


class MultiGrader(_Strict):
    type: Literal["multi"]
    name: str
    # The spec (and the SDK's types) have one grader here; OpenAI's API and older SDKs send a
    # dict name -> grader, whose names the formula uses. Both are accepted and echoed as sent.
    graders: Annotated[
        Annotated[SubGrader, Tag("one-grader")] | Annotated[dict[str, SubGrader], Tag("named-graders")],
        Discriminator(
            _graders_kind,
            custom_error_type="invalid_graders",
            custom_error_message="graders must be one grader object or an object mapping names to graders",
        ),
    ]
    calculate_output: str

    def named(self) -> dict[str, StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader]:
        """The sub-graders by the names the formula uses (one grader: its own `name`)."""
        if isinstance(self.graders, dict):
            return dict(self.graders)
        return {self.graders.name: self.graders}


Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | LabelModelGrader | PythonGrader | MultiGrader,
    Field(discriminator="type"),
]
GRADER_TYPES = ("string_check", "text_similarity", "score_model", "label_model", "python", "multi")
ModelGrader = ScoreModelGrader | LabelModelGrader

_GRADER = TypeAdapter(Grader)

# Tags of the callable discriminators above: they appear in pydantic's error locations but
# name no field, so they are left out of the `param` path.
_UNION_TAGS = {
    "text-content",
    "content-part",
    "content-parts",
    "one-grader",
    "named-graders",
    "input_text",
    "output_text",
    *GRADER_TYPES,
}
_UNSUPPORTED_CONTENT = {"input_image", "input_audio"}


def _path(param: str, loc: tuple[int | str, ...]) -> str:
    path = param
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _UNION_TAGS:
            path += f".{part}" if path else part
    return path


def _invalid(exc: ValidationError, param: str) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    kind, loc = error["type"], tuple(error["loc"])
    where = _path(param, loc)
    ctx = error.get("ctx") or {}
    if kind == "union_tag_invalid":
        tag = ctx.get("tag")
        if tag in _UNSUPPORTED_CONTENT:
            return InvalidRequest(
                f"Content type '{tag}' in '{where}' is not supported: this server's graders take text content only "
                "(input_text, output_text).",
                param=f"{where}.type",
            )
        expected = ctx.get("expected_tags", "")
        if tag == "multi" and "'multi'" not in expected:
            return InvalidRequest(f"A multi grader cannot contain another multi grader ('{where}').", param=f"{where}.type")
        return InvalidRequest(f"Unknown type '{tag}' for '{where}'. Supported types: {expected}.", param=f"{where}.type")
    if kind == "union_tag_not_found":
        return InvalidRequest(f"Missing 'type' for '{where}': it says which kind of object this is.", param=f"{where}.type")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{where}'.", param=where)
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unknown parameter: '{where}'.", param=where)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return InvalidRequest(f"Invalid value for '{where}': expected an object.", param=where)
    return InvalidRequest(f"Invalid value for '{where}': {error['msg']}.", param=where)


def parse_grader(obj: Any, *, param: str, allowed: Collection[str] | None = None, for_eval: bool = False) -> Grader:
    """A grader from request JSON, or InvalidRequest naming the field (`{param}.operation`...).

    `allowed` limits the top-level types (an eval's testing criteria take no `multi`; the
    graders API takes no top-level `label_model`). `for_eval` applies the EvalGrader* rules:
    a text_similarity grader must have a pass_threshold.
    """
    if isinstance(obj, dict) and allowed is not None and isinstance(obj.get("type"), str):
        if obj["type"] in GRADER_TYPES and obj["type"] not in allowed:
            raise InvalidRequest(
                f"Grader type '{obj['type']}' is not accepted in '{param}'. Supported types: {', '.join(allowed)}.",
                param=f"{param}.type",
            )
    try:
        grader = _GRADER.validate_python(obj)
    except ValidationError as exc:
        if allowed is not None:
            error = exc.errors(include_url=False)[0]
            if error["type"] == "union_tag_invalid" and not error["loc"]:
                raise InvalidRequest(
                    f"Unknown grader type '{(error.get('ctx') or {}).get('tag')}' for '{param}'. "
                    f"Supported types: {', '.join(allowed)}.",
                    param=f"{param}.type",
                ) from None
        raise _invalid(exc, param) from None
    _check(grader, param=param, for_eval=for_eval)
    return grader


def _check(grader: Grader, *, param: str, for_eval: bool) -> None:
    """The rules a schema cannot say: ranges, label sets, formulas, Python that compiles."""
    if isinstance(grader, TextSimilarityGrader):
        if for_eval and grader.pass_threshold is None:
            raise InvalidRequest(f"Missing required parameter: '{param}.pass_threshold'.", param=f"{param}.pass_threshold")
    elif isinstance(grader, ScoreModelGrader):
        _check_messages(grader.input, param=f"{param}.input")
        if len(grader.range) != 2 or not grader.range[0] < grader.range[1]:
            raise InvalidRequest(f"'{param}.range' must be two numbers [min, max] with min < max.", param=f"{param}.range")
    elif isinstance(grader, LabelModelGrader):
        _check_messages(grader.input, param=f"{param}.input")
        if not grader.labels or len(grader.labels) > MAX_LABELS:
            raise InvalidRequest(f"'{param}.labels' must hold 1 to {MAX_LABELS} labels.", param=f"{param}.labels")
        if any(not label.strip() for label in grader.labels) or len(set(grader.labels)) != len(grader.labels):
            raise InvalidRequest(f"'{param}.labels' must be distinct, non-empty strings.", param=f"{param}.labels")
        if not grader.passing_labels:
            raise InvalidRequest(f"'{param}.passing_labels' must name at least one label.", param=f"{param}.passing_labels")
        stray = [label for label in grader.passing_labels if label not in grader.labels]
        if stray:
            raise InvalidRequest(
                f"'{param}.passing_labels' must be a subset of labels; not in labels: {', '.join(map(repr, stray))}.",
                param=f"{param}.passing_labels",
            )
    elif isinstance(grader, PythonGrader):
        _check_python(grader.source, param=f"{param}.source")
    elif isinstance(grader, MultiGrader):
        named = grader.named()
        for name, sub in named.items():
            where = f"{param}.graders.{name}" if isinstance(grader.graders, dict) else f"{param}.graders"
            if not name.isidentifier() or keyword.iskeyword(name) or name in formula.FUNCTIONS:
                raise InvalidRequest(
                    f"Sub-grader name {name!r} in '{where}' cannot be used in calculate_output: "
                    "use a name made of letters, digits and underscores that is not a function name.",
                    param=where,
                )
            _check(sub, param=where, for_eval=for_eval)
        try:
            formula.parse(grader.calculate_output, named.keys())
        except formula.FormulaError as exc:
            raise InvalidRequest(f"Invalid '{param}.calculate_output': {exc}.", param=f"{param}.calculate_output") from None


def _check_messages(messages: list[InputMessage], *, param: str) -> None:
    if not messages:
        raise InvalidRequest(f"'{param}' must hold at least one message.", param=param)


def _check_python(source: str, *, param: str) -> None:
    if len(source) > MAX_PYTHON_SOURCE_CHARS:
        raise InvalidRequest(f"'{param}' is longer than {MAX_PYTHON_SOURCE_CHARS} characters.", param=param)
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise InvalidRequest(f"'{param}' does not compile: {exc.msg} (line {exc.lineno}).", param=param) from None
    except ValueError as exc:  # e.g. a NUL character
        raise InvalidRequest(f"'{param}' does not compile: {exc}.", param=param) from None
    if not any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "grade" for node in tree.body):
        raise InvalidRequest(f"'{param}' must define a function grade(sample, item) that returns a number.", param=param)


# --- echo ---------------------------------------------------------------------------------


def grader_to_dict(grader: Grader) -> dict[str, Any]:
    """The grader as OpenAI echoes it: inputs in the EvalItem form, unset options left out."""
    if isinstance(grader, MultiGrader):
        graders: Any
        if isinstance(grader.graders, dict):
            graders = {name: grader_to_dict(sub) for name, sub in grader.graders.items()}
        else:
            graders = grader_to_dict(grader.graders)
        return {"type": "multi", "name": grader.name, "graders": graders, "calculate_output": grader.calculate_output}
    out = grader.model_dump(exclude_none=True)
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        out["input"] = [eval_item(message) for message in grader.input]
    return out


def default_pass_threshold(grader: Grader) -> float:
    """The threshold a grader without `pass_threshold` passes at.

    score_model: the middle of its range (OpenAI documents no default; the middle is the
    neutral choice for any range). text_similarity and python: 1.0, a perfect score, so that
    a graders/run call without a threshold reports `passed` only for a full match.
    """
    if isinstance(grader, ScoreModelGrader):
        low, high = grader.range
        return (low + high) / 2
    return 1.0


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
