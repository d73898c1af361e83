"""A run's rows: read from an uploaded JSONL file or the request's inline content, each
checked against the eval's `item_schema` before anything is generated or graded.

A row is `{"item": {...}, "sample": {...}}` as OpenAI documents it; a JSONL line that is a
bare object (no `item` key) is taken as the item itself, the form most people write first.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from service.core.errors import InvalidRequest
from service.core.jsonl import JsonlError, iter_objects
from service.core.storage import ObjectStore


@dataclass(frozen=True)
class Row:
    index: int  # 0-based place in the data: the output item's `datasource_item_id`
    line: int  # 1-based line of the file (or entry of `content`), for error messages
    item: dict[str, Any]
    sample: dict[str, Any] | None


class BadRow(ValueError):
    """A row the run cannot use; the run fails naming the line, as a bad training file fails a job."""

    def __init__(self, line: int, message: str):
        super().__init__(f"Line {line}: {message}")
        self.line = line


def item_validator(item_schema: dict[str, Any], *, param: str) -> Draft202012Validator:
    try:
        Draft202012Validator.check_schema(item_schema)
    except SchemaError as exc:
        raise InvalidRequest(f"item_schema is not a valid JSON schema: {exc.message}", param=param) from exc
    return Draft202012Validator(item_schema)


def to_row(index: int, line: int, obj: Any) -> Row:
    if not isinstance(obj, dict):
        raise BadRow(line, f"expected a JSON object, got {type(obj).__name__}")
    if isinstance(obj.get("item"), dict) and set(obj) <= {"item", "sample"}:
        sample = obj.get("sample")
        if sample is not None and not isinstance(sample, dict):
            raise BadRow(line, "`sample` must be an object")
        return Row(index, line, obj["item"], sample)
    return Row(index, line, obj, None)


def check_rows(rows: list[Row], validator: Draft202012Validator) -> None:
    for row in rows:
        error = next(iter(sorted(validator.iter_errors(row.item), key=lambda e: list(e.absolute_path))), None)
        if error is not None:
            where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            raise BadRow(row.line, f"the item does not match the eval's item_schema (item{where}: {error.message})")


def rows_from_content(content: list[Any]) -> list[Row]:
    return [to_row(i, i + 1, entry) for i, entry in enumerate(content)]


def jsonl_objects(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, object) of a JSONL file; a line that is not a JSON object is a BadRow naming it."""
    try:
        yield from iter_objects(path)
    except JsonlError as exc:
        raise BadRow(exc.line, f"not a JSON object ({exc.detail})") from exc


@contextmanager
def downloaded(store: ObjectStore, storage_key: str) -> Iterator[Path]:
    """The stored object as a local scratch file, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="tailor-scratch-eval-") as tmp:
        path = Path(tmp) / "data.jsonl"
        store.download(storage_key, path)
        yield path


def rows_from_file(store: ObjectStore, storage_key: str, max_items: int) -> list[Row]:
    with downloaded(store, storage_key) as path:
        rows: list[Row] = []
        for line, obj in jsonl_objects(path):
            if len(rows) >= max_items:
                raise BadRow(line, f"the run holds more than {max_items} items (TAILOR_EVAL_MAX_ITEMS)")
            rows.append(to_row(len(rows), line, obj))
        return rows


def lookup(path: str, item: dict[str, Any], sample: dict[str, Any] | None) -> Any:
    """The value at `item.a.b` / `sample.x`; KeyError when any step is missing."""
    head, _, rest = path.partition(".")
    value: Any = {"item": item, "sample": sample or {}}[head]
    for part in rest.split(".") if rest else []:
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(path)
    return value
