"""What an eval and a run are made of, checked once when they are created and read back by
the worker: the data source config, the testing criteria, and a run's data source.

Every refusal is an InvalidRequest naming the field at fault, e.g.
`data_source.input_messages.template[0].content`.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import InvalidRequest
from service.evals.data import item_validator
from service.evals.graders import (
    Grader,
    check_messages_references,
    check_references,
    check_supported,
    grader_to_dict,
    parse_grader,
    parse_messages,
)

# The sample a `completions` run produces, as its schema is shown to graders.
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
    },
    "required": ["model", "choices"],
}
NO_COMPLETIONS_STORED = (
    "Tailor stores no chat completions, so it cannot build an eval from logs or stored completions. "
    "Use a data_source_config of type 'custom' with an item_schema, and run it on a file of items."
)
# What an eval's testing_criteria may hold (the spec's CreateEvalRequest); `multi` is graders/run's.
EVAL_GRADER_TYPES = ("string_check", "text_similarity", "score_model", "label_model", "python")
SAMPLING_FIELDS = {"temperature": float, "max_completion_tokens": int, "top_p": float, "seed": int}
SAMPLING_RANGES = {"temperature": (0, 2), "max_completion_tokens": (1, 32768), "top_p": (0, 1), "seed": (0, 2**63 - 1)}


def data_source_config(obj: dict[str, Any]) -> dict[str, Any]:
    """The config as the Eval object shows it: `custom`, with the schema graders see."""
    kind = obj.get("type")
    if kind in ("logs", "stored_completions"):
        raise InvalidRequest(NO_COMPLETIONS_STORED, param="data_source_config.type")
    if kind != "custom":
        raise InvalidRequest("data_source_config.type must be 'custom'", param="data_source_config.type")
    unknown = set(obj) - {"type", "item_schema", "include_sample_schema"}
    if unknown:
        raise InvalidRequest(f"Unknown field '{sorted(unknown)[0]}'", param=f"data_source_config.{sorted(unknown)[0]}")
    item_schema = obj.get("item_schema")
    if not isinstance(item_schema, dict):
        raise InvalidRequest(
            "data_source_config.item_schema must be a JSON schema object", param="data_source_config.item_schema"
        )
    item_validator(item_schema, param="data_source_config.item_schema")
    include_sample = obj.get("include_sample_schema", False)
    if not isinstance(include_sample, bool):
        raise InvalidRequest("include_sample_schema must be a boolean", param="data_source_config.include_sample_schema")
    properties: dict[str, Any] = {"item": item_schema}
    if include_sample:
        properties["sample"] = SAMPLE_SCHEMA
    return {"type": "custom", "schema": {"type": "object", "properties": properties, "required": list(properties)}}


def item_schema_of(config: dict[str, Any]) -> dict[str, Any]:
    return config["schema"]["properties"]["item"]


def includes_sample(config: dict[str, Any]) -> bool:
    return "sample" in config["schema"]["properties"]


def testing_criteria(
    criteria: list[dict[str, Any]],
    config: dict[str, Any],
    *,
    field: str = "testing_criteria",
    python_enabled: bool = True,
    cosine_enabled: bool = True,
) -> list[dict[str, Any]]:
    """Each criterion parsed, its templates checked against the item schema, refused if this
    server cannot run it, and echoed with an id."""
    out = []
    for i, obj in enumerate(criteria):
        param = f"{field}[{i}]"
        if not isinstance(obj, dict):
            raise InvalidRequest("Each testing criterion must be an object", param=param)
        grader = parse_grader(obj, param=param, allowed=EVAL_GRADER_TYPES, for_eval=True)
        check_references(grader, item_schema_of(config), includes_sample(config), param=param)
        check_supported(grader, param=param, python_enabled=python_enabled, cosine_enabled=cosine_enabled)
        echoed = grader_to_dict(grader)
        echoed["id"] = f"{echoed.get('name') or grader.type}-{uuid.uuid4()}"
        out.append(echoed)
    names = [c["name"] for c in out]
    if len(set(names)) != len(names):
        raise InvalidRequest("Testing criteria need distinct names", param=field)
    return out


def stored_criteria(criteria: list[dict[str, Any]]) -> list[tuple[str, Grader]]:
    """(id, grader) of each criterion as the eval row keeps it."""
    return [
        (c["id"], parse_grader({k: v for k, v in c.items() if k != "id"}, param=f"testing_criteria[{i}]"))
        for i, c in enumerate(criteria)
    ]


@dataclass
class RunSource:
    """A run's data source, checked: where its rows come from and how samples are made."""

    kind: str  # "jsonl": samples are in the rows; "completions": Tailor generates them
    file_id: str | None = None
    content: list[Any] | None = None
    model: str | None = None
    template: list[dict[str, Any]] | None = None
    item_reference: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)


def run_source(obj: dict[str, Any], config: dict[str, Any]) -> RunSource:
    kind = obj.get("type")
    if kind == "responses":
        raise InvalidRequest(
            "Tailor serves no Responses API: use a data source of type 'completions' or 'jsonl'", param="data_source.type"
        )
    if kind not in ("jsonl", "completions"):
        raise InvalidRequest("data_source.type must be 'jsonl' or 'completions'", param="data_source.type")
    allowed = {"type", "source"} | ({"model", "input_messages", "sampling_params"} if kind == "completions" else set())
    for key in obj:
        if key not in allowed:
            raise InvalidRequest(f"Unknown field '{key}' for a '{kind}' data source", param=f"data_source.{key}")
    run = RunSource(kind=kind)
    _read_source(run, obj.get("source"))
    if kind == "completions":
        model = obj.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("A 'completions' data source names the model to sample", param="data_source.model")
        run.model = model
        _read_input_messages(run, obj.get("input_messages"), item_schema_of(config))
        run.sampling = _sampling(obj.get("sampling_params"))
    return run


def _read_source(run: RunSource, source: Any) -> None:
    if not isinstance(source, dict):
        raise InvalidRequest("data_source.source must be an object", param="data_source.source")
    kind = source.get("type")
    if kind == "stored_completions":
        raise InvalidRequest(NO_COMPLETIONS_STORED, param="data_source.source.type")
    if kind == "file_id":
        if not isinstance(source.get("id"), str) or set(source) != {"type", "id"}:
            raise InvalidRequest("A 'file_id' source is {type, id} with a file id", param="data_source.source.id")
        run.file_id = source["id"]
    elif kind == "file_content":
        content = source.get("content")
        if not isinstance(content, list) or set(source) != {"type", "content"}:
            raise InvalidRequest("A 'file_content' source is {type, content} with a list", param="data_source.source.content")
        run.content = content
    else:
        raise InvalidRequest("data_source.source.type must be 'file_id' or 'file_content'", param="data_source.source.type")


def _read_input_messages(run: RunSource, spec: Any, item_schema: dict[str, Any]) -> None:
    param = "data_source.input_messages"
    if spec is None:
        raise InvalidRequest("A 'completions' data source needs input_messages (a template or an item_reference)", param=param)
    if not isinstance(spec, dict):
        raise InvalidRequest("input_messages must be an object", param=param)
    if spec.get("type") == "template" and isinstance(spec.get("template"), list) and set(spec) == {"type", "template"}:
        template = spec["template"]
        if not template:
            raise InvalidRequest("The template holds no message", param=f"{param}.template")
        # No sample exists yet when the prompt is rendered: only item fields may be named.
        messages = parse_messages(template, param=f"{param}.template")
        check_messages_references(messages, item_schema, False, param=f"{param}.template")
        run.template = template
    elif spec.get("type") == "item_reference" and isinstance(spec.get("item_reference"), str) and len(spec) == 2:
        reference = spec["item_reference"].strip().removeprefix("{{").removesuffix("}}").strip()
        if not reference.startswith("item."):
            raise InvalidRequest(
                "item_reference names a field of the item, e.g. 'item.messages'", param=f"{param}.item_reference"
            )
        run.item_reference = reference
    else:
        raise InvalidRequest(
            "input_messages is {type: 'template', template: [...]} or {type: 'item_reference', item_reference: 'item.x'}",
            param=param,
        )


def _sampling(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidRequest("sampling_params must be an object", param="data_source.sampling_params")
    out: dict[str, Any] = {}
    for key, value in params.items():
        kind = SAMPLING_FIELDS.get(key)
        if kind is None:
            raise InvalidRequest(f"Unsupported sampling parameter '{key}'", param=f"data_source.sampling_params.{key}")
        if value is None:
            continue
        ok = isinstance(value, int) if kind is int else isinstance(value, int | float) and math.isfinite(value)
        low, high = SAMPLING_RANGES[key]
        if not ok or isinstance(value, bool) or not low <= value <= high:
            raise InvalidRequest(
                f"sampling_params.{key} must be a {kind.__name__} from {low} to {high}",
                param=f"data_source.sampling_params.{key}",
            )
        out[key] = value
    return out
