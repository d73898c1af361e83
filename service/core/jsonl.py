"""The one walk over a JSONL file, shared by upload validation and the trainer's loader.

It reads a line at a time (a large file never sits in memory), skips blank lines, and stops
at the first line that is not a JSON object with a `JsonlError` saying which line and why;
each caller words that for its own users.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

Problem = Literal["not_utf8", "not_json", "not_object"]


class JsonlError(ValueError):
    def __init__(self, line: int, problem: Problem, detail: str):
        super().__init__(f"line {line}: {problem} ({detail})")
        self.line = line  # 1-based
        self.problem = problem
        # not_json: the parser's message and column; not_object: the JSON type found.
        self.detail = detail


def iter_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line, in file order."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise JsonlError(number, "not_utf8", "") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise JsonlError(number, "not_json", f"{exc.msg} at column {exc.colno}") from None
            if not isinstance(value, dict):
                raise JsonlError(number, "not_object", type(value).__name__)
            yield number, value
