"""OpenAI's grader templates: `{{ item.x.y }}` and `{{ sample.output_text }}` in grader strings.

A template names a namespace (`item`: the data source row; `sample`: the model's output,
`output_text`, `output_json`, ...) and a JSON-path-like path in it (`.key`, `[0]`). Strings
render as they are, other values as JSON, and a path the row does not have renders as the
empty string and is reported. `check_references` refuses, when an eval is created, a
template that names a field the item schema does not declare or a sample that will not
exist, so a typo is a 400 rather than a run of empty prompts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from service.core.errors import InvalidRequest
from service.evals.graders.models import (
    Grader,
    InputMessage,
    LabelModelGrader,
    MultiGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    content_text,
    parse_messages,
)

NAMESPACES = ("item", "sample")
# What the sample namespace holds (OpenAI's list); output_text is a string and has no fields.
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices", "output_audio")

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[\]\s{}]+)|\[(\d+)\]")
_HEAD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateError(ValueError):
    """A `{{ ... }}` that is not `namespace.path`."""


def references(text: str) -> list[str]:
    """The expressions inside every `{{ ... }}` of `text`, stripped: `["item.x", "sample.output_text"]`."""
    return [match.group(1).strip() for match in _TEMPLATE.finditer(text)]


def parse_reference(reference: str) -> tuple[str, list[str | int]]:
    """`item.a[0].b` -> ("item", ["a", 0, "b"]); TemplateError for anything else."""
    head = _HEAD.match(reference)
    if head is None:
        raise TemplateError(
            f"'{{{{ {reference} }}}}' is not a reference: write {{{{ item.<field> }}}} or {{{{ sample.<field> }}}}"
        )
    namespace = head.group(0)
    if namespace not in NAMESPACES:
        raise TemplateError(
            f"'{{{{ {reference} }}}}' uses the namespace '{namespace}': the only namespaces are 'item' and 'sample'"
        )
    rest, path = reference[head.end() :], []
    position = 0
    while position < len(rest):
        segment = _SEGMENT.match(rest, position)
        if segment is None:
            raise TemplateError(f"'{{{{ {reference} }}}}' is not a valid path: use .field and [index] after '{namespace}'")
        path.append(segment.group(1) if segment.group(1) is not None else int(segment.group(2)))
        position = segment.end()
    if not path:
        raise TemplateError(f"'{{{{ {reference} }}}}' names no field: write {{{{ {namespace}.<field> }}}}")
    return namespace, path


_MISSING = object()


def _lookup(root: Any, path: Sequence[str | int]) -> Any:
    node = root
    for segment in path:
        if isinstance(node, Mapping):
            node = node.get(segment if isinstance(segment, str) else str(segment), _MISSING)
        elif isinstance(node, list) and (isinstance(segment, int) or segment.isdigit()):
            index = int(segment)
            node = node[index] if index < len(node) else _MISSING
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render_report(text: str, item: Mapping[str, Any], sample: Mapping[str, Any] | None) -> tuple[str, list[str]]:
    """`text` with its templates filled in, and the references that found nothing (rendered as '')."""
    missing: list[str] = []

    def fill(match: re.Match[str]) -> str:
        reference = match.group(1).strip()
        try:
            namespace, path = parse_reference(reference)
        except TemplateError:
            missing.append(reference)
            return ""
        root = item if namespace == "item" else sample
        value = _MISSING if root is None else _lookup(root, path)
        if value is _MISSING:
            missing.append(reference)
            return ""
        return _text(value)

    return _TEMPLATE.sub(fill, text), missing


def render(text: str, item: Mapping[str, Any], sample: Mapping[str, Any] | None) -> str:
    """`text` with its templates filled in (a missing path renders as the empty string)."""
    return render_report(text, item, sample)[0]


# --- chat messages ------------------------------------------------------------------------


def chat_messages_report(
    grader_input: Sequence[InputMessage | Mapping[str, Any]],
    item: Mapping[str, Any],
    sample: Mapping[str, Any] | None,
) -> tuple[list[dict[str, str]], list[str]]:
    """The rendered chat messages and the references that found nothing."""
    messages = [
        m if isinstance(m, InputMessage) else parse_messages([m], param="input")[0]  # a dict: validated first
        for m in grader_input
    ]
    out, missing = [], []
    for message in messages:
        text, lost = render_report(content_text(message.content), item, sample)
        missing.extend(lost)
        # Local chat templates know system, user and assistant; `developer` is OpenAI's new
        # name for the system role, so it is sent as one.
        out.append({"role": "system" if message.role == "developer" else message.role, "content": text})
    return out, missing


def chat_messages(
    grader_input: Sequence[InputMessage | Mapping[str, Any]],
    item: Mapping[str, Any],
    sample: Mapping[str, Any] | None,
) -> list[dict[str, str]]:
    """Input messages (either form) rendered into chat messages `{"role", "content": str}`."""
    return chat_messages_report(grader_input, item, sample)[0]


# --- checking references when an eval or a grader is created ------------------------------


def grader_templates(grader: Grader, *, param: str) -> Iterator[tuple[str, str]]:
    """Every template string of a grader with the param path it came from."""
    if isinstance(grader, StringCheckGrader | TextSimilarityGrader):
        yield grader.input, f"{param}.input"
        yield grader.reference, f"{param}.reference"
    elif isinstance(grader, ScoreModelGrader | LabelModelGrader):
        yield from message_templates(grader.input, param=f"{param}.input")
    elif isinstance(grader, MultiGrader):
        for name, sub in grader.named().items():
            where = f"{param}.graders.{name}" if isinstance(grader.graders, dict) else f"{param}.graders"
            yield from grader_templates(sub, param=where)


def message_templates(messages: Sequence[InputMessage], *, param: str) -> Iterator[tuple[str, str]]:
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, str):
            yield content, f"{param}[{i}].content"
        elif isinstance(content, list):
            for j, part in enumerate(content):
                yield part.text, f"{param}[{i}].content[{j}].text"
        else:
            yield content.text, f"{param}[{i}].content.text"


def check_text_references(text: str, item_schema: Mapping[str, Any] | None, include_sample: bool, *, param: str) -> None:
    """Refuse (400, `param`) a template in `text` that cannot find anything at run time."""
    for reference in references(text):
        try:
            namespace, path = parse_reference(reference)
        except TemplateError as exc:
            raise InvalidRequest(f"Invalid template in '{param}': {exc}.", param=param) from None
        if namespace == "sample":
            _check_sample(reference, path, include_sample, param=param)
        elif item_schema is not None:
            problem = _schema_problem(item_schema, path)
            if problem:
                raise InvalidRequest(f"Invalid template in '{param}': '{{{{ {reference} }}}}' names {problem}.", param=param)


def check_references(grader: Grader, item_schema: Mapping[str, Any] | None, include_sample: bool, *, param: str) -> None:
    """Every template of `grader` must name a field the item schema declares (no schema:
    any item field) or, when there is a sample, a field of the sample namespace."""
    for text, where in grader_templates(grader, param=param):
        check_text_references(text, item_schema, include_sample, param=where)


def check_messages_references(
    messages: Sequence[InputMessage], item_schema: Mapping[str, Any] | None, include_sample: bool, *, param: str
) -> None:
    """The same check over input messages (a data source's `input_messages.template`)."""
    for text, where in message_templates(messages, param=param):
        check_text_references(text, item_schema, include_sample, param=where)


def _check_sample(reference: str, path: list[str | int], include_sample: bool, *, param: str) -> None:
    if not include_sample:
        raise InvalidRequest(
            f"Invalid template in '{param}': '{{{{ {reference} }}}}' uses the sample namespace, "
            "but there is no model sample here (the data source generates none).",
            param=param,
        )
    head = path[0]
    if head not in SAMPLE_FIELDS:
        raise InvalidRequest(
            f"Invalid template in '{param}': the sample namespace has no field {head!r} (it has {', '.join(SAMPLE_FIELDS)}).",
            param=param,
        )
    if head == "output_text" and len(path) > 1:
        raise InvalidRequest(
            f"Invalid template in '{param}': sample.output_text is a string and has no fields "
            "(sample.output_json holds the output parsed as JSON).",
            param=param,
        )


def _types(schema: Mapping[str, Any]) -> set[str]:
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return {t for t in declared if isinstance(t, str)}
    return set()


def _schema_problem(schema: Any, path: Sequence[str | int], walked: str = "item") -> str | None:
    """Why `path` cannot exist in data valid for `schema`, or None where it may."""
    node = schema
    for position, segment in enumerate(path):
        if not isinstance(node, Mapping):
            return None if node is not False else f"'{walked}', which the item schema forbids"
        branches = [b for key in ("anyOf", "oneOf", "allOf") for b in node.get(key) or [] if isinstance(b, Mapping)]
        if branches:
            # Accept the path where any branch may hold it: the check catches typos, not every
            # impossible combination.
            problems = [_schema_problem(b, path[position:], walked) for b in branches]
            if any(problem is None for problem in problems):
                return None
            return problems[0]
        if "$ref" in node:
            return None  # references into $defs are not followed; accept
        types = _types(node)
        label = f"{walked}[{segment}]" if isinstance(segment, int) else f"{walked}.{segment}"
        if isinstance(segment, int) or (types == {"array"} and segment.isdigit()):
            if types and "array" not in types:
                return f"'{label}', but '{walked}' is not an array in the item schema"
            node, walked = node.get("items", True), label
            continue
        if types and "object" not in types:
            kind = "/".join(sorted(types))
            return f"'{label}', but '{walked}' is of type {kind} in the item schema and has no fields"
        properties = node.get("properties")
        if isinstance(properties, Mapping) and segment in properties:
            node, walked = properties[segment], label
            continue
        patterns = node.get("patternProperties")
        if isinstance(patterns, Mapping) and any(re.search(p, segment) for p in patterns if isinstance(p, str)):
            return None
        additional = node.get("additionalProperties")
        if isinstance(additional, Mapping):
            node, walked = additional, label
            continue
        if additional is True:
            return None
        if additional is False or properties:
            declared = ", ".join(map(str, properties)) if isinstance(properties, Mapping) and properties else "none"
            return f"'{label}', which the item schema does not declare (its fields: {declared})"
        return None  # an open object that declares nothing: any field may be there
    return None
