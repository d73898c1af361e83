"""Response bodies checked against the official OpenAI spec (the subset in shared/reference).

`validate(body, "FineTuningJob")` raises AssertionError listing every place where `body`
breaks `#/components/schemas/FineTuningJob`. The spec says `openapi: 3.1.0` (JSON Schema
2020-12) but still carries OpenAPI 3.0 habits, which are rewritten once at load time:

- `nullable: true` becomes a real "null is allowed" (JSON Schema ignores the keyword);
- boolean `exclusiveMinimum`/`exclusiveMaximum` become the numeric 2020-12 form (a boolean
  there would be compared as the number 1 and refuse e.g. a learning rate of 0.5).

`x-*` keys, `discriminator`, `example` and `format: unixtime` are annotations and need nothing.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:tailor:openai-openapi-subset"


def _spec_path() -> Path:
    if env := os.environ.get("TAILOR_OPENAI_SPEC"):
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "reference" / "openai-openapi.subset.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "openai-openapi.subset.yaml not found in any shared/reference/ above the tests; set TAILOR_OPENAI_SPEC to its path"
    )


# Keywords whose value is one schema, a list of schemas, or a name → schema map. Walking only
# these keeps the rewrite away from data that merely looks like a schema (examples, defaults).
_ONE_SCHEMA = (
    "items",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "not",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "additionalItems",
)
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_COMPOSITION = ("$ref", "allOf", "anyOf", "oneOf")


def _fix_exclusive_bounds(node: dict[str, Any]) -> None:
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        flag = node.get(exclusive)
        if isinstance(flag, bool):
            del node[exclusive]
            if flag and inclusive in node:
                node[exclusive] = node.pop(inclusive)


def _allow_null(node: dict[str, Any]) -> dict[str, Any]:
    """The schema `node` (with `nullable` already removed) widened to accept null."""
    if any(k in node for k in _COMPOSITION):
        # null must get past the composition too (a oneOf of objects would refuse it), so
        # the whole schema becomes one branch and null the other.
        return {"anyOf": [node, {"type": "null"}]}
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if "null" not in types:
            node["type"] = [*types, "null"]
    if "enum" in node and None not in node["enum"]:
        node["enum"] = [*node["enum"], None]
    return node


def _openapi_to_json_schema(node: Any) -> Any:
    """Rewrite one schema (recursively) from OpenAPI 3.0 habits into JSON Schema 2020-12."""
    if not isinstance(node, dict):
        return node
    node = dict(node)
    for key in _ONE_SCHEMA:
        if isinstance(node.get(key), dict):
            node[key] = _openapi_to_json_schema(node[key])
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            node[key] = [_openapi_to_json_schema(s) for s in node[key]]
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            node[key] = {name: _openapi_to_json_schema(s) for name, s in node[key].items()}
    _fix_exclusive_bounds(node)
    if "nullable" in node:
        if node.pop("nullable") is True:
            return _allow_null(node)
    return node


def _own_recursion(node: Any, name: str) -> Any:
    """Draft 2019-09's `$recursiveAnchor: true` / `$recursiveRef: '#'` (a schema naming
    itself, as CompoundFilter does) as a plain `$ref` to the component: 2020-12 dropped both."""
    if isinstance(node, list):
        return [_own_recursion(item, name) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _own_recursion(value, name) for key, value in node.items() if key != "$recursiveAnchor"}
    if out.pop("$recursiveRef", None) == "#":
        out["$ref"] = f"#/components/schemas/{name}"
    return out


def _extend(schemas: dict[str, Any]) -> None:
    # Deliberate extension: the spec's own example for POST /fine_tuning/jobs/{id}/pause
    # answers `"status": "paused"`, but FineTuningJob.status leaves "paused" out of its enum.
    # We follow the example (pause/resume are implemented), so "paused" is accepted here.
    status = schemas["FineTuningJob"]["properties"]["status"]
    if "paused" not in status["enum"]:
        status["enum"] = [*status["enum"], "paused"]


@functools.cache
def load_spec() -> dict[str, Any]:
    """The spec document with every component schema rewritten into JSON Schema 2020-12."""
    with open(_spec_path(), encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    for name in list(schemas):
        schemas[name] = _own_recursion(_openapi_to_json_schema(schemas[name]), name)
    _extend(schemas)
    return spec


@functools.cache
def _registry() -> Registry:
    resource = Resource(contents=load_spec(), specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def schema_names() -> list[str]:
    return sorted(load_spec()["components"]["schemas"])


@functools.cache
def validator_for(schema_name: str) -> Draft202012Validator:
    if schema_name not in load_spec()["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in #/components/schemas of the OpenAI spec subset")
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}, registry=_registry())


def _where(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _describe(errors: Iterable[ValidationError], indent: str = "  ", depth: int = 0) -> list[str]:
    lines: list[str] = []
    for error in sorted(errors, key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        lines.append(f"{indent}at {_where(error)}: {error.message}  (schema: {'/'.join(map(str, error.schema_path))})")
        # anyOf/oneOf only say "not valid under any of the given schemas"; show why each
        # branch refused, a few levels down, so the real culprit is visible.
        if error.context and depth < 3:
            lines.extend(_describe(error.context, indent + "    ", depth + 1))
    return lines


def _preview(body: Any, limit: int = 2000) -> str:
    try:
        text = json.dumps(body, indent=2, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(body)
    return text if len(text) <= limit else text[:limit] + "\n  ... (truncated)"


def validate(body: Any, schema_name: str) -> None:
    """Raise AssertionError listing every way `body` breaks `#/components/schemas/{schema_name}`."""
    errors = list(validator_for(schema_name).iter_errors(body))
    if errors:
        lines = [f"body does not match OpenAI schema {schema_name} ({len(errors)} error(s)):"]
        lines += _describe(errors)
        lines.append(f"body:\n{_preview(body)}")
        raise AssertionError("\n".join(lines))


def assert_error_envelope(body: Any, status_code: int | None = None) -> dict[str, Any]:
    """Check an error body against ErrorResponse and return its inner `error` object.

    `body` is the parsed JSON, or a response object (httpx, requests) whose `.json()` is.
    With `status_code`, a response must have that status, and the error `type` must fit
    it the way OpenAI's do: `invalid_request_error` for 4xx (429 aside), `server_error` for 5xx.
    """
    if hasattr(body, "status_code") and hasattr(body, "json"):
        response = body
        if status_code is not None:
            assert response.status_code == status_code, (
                f"expected HTTP {status_code}, got {response.status_code}: {response.text[:2000]}"
            )
        status_code = response.status_code if status_code is None else status_code
        try:
            body = response.json()
        except ValueError as exc:
            raise AssertionError(f"error response is not JSON: {response.text[:2000]!r}") from exc
    assert isinstance(body, Mapping), f"error body is not a JSON object: {_preview(body)}"
    validate(dict(body), "ErrorResponse")
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"].strip(), f"empty error message: {_preview(body)}"
    if status_code is not None:
        if 400 <= status_code < 500 and status_code != 429:
            assert error["type"] == "invalid_request_error", f"HTTP {status_code} with error type {error['type']!r}"
        elif status_code >= 500:
            assert error["type"] == "server_error", f"HTTP {status_code} with error type {error['type']!r}"
    return dict(error)


def spec_valid(body: dict[str, Any], schema: str) -> None:
    """`validate`, but OpenAI's own examples send `error: null` (a run's, a sample's) where
    the spec's schema has an object: that one field is checked apart."""

    def fill(obj: dict[str, Any]) -> dict[str, Any]:
        out = dict(obj)
        if "error" in out:
            assert out["error"] is None or set(out["error"]) == {"code", "message"}, out["error"]
            out["error"] = out["error"] or {"code": "", "message": ""}
        if isinstance(out.get("sample"), dict):
            out["sample"] = fill(out["sample"])
        if isinstance(out.get("data"), list):
            out["data"] = [fill(d) for d in out["data"]]
        return out

    validate(fill(body), schema)
