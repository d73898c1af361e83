"""The one walk over a JSONL file, shared by upload validation and the trainer's loader.

It reads a line at a time (a large file never sits in memory), skips blank lines, and stops
at the first line that is not a standard JSON object with a `JsonlError` saying which line
and why; each caller words that for its own users.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

Problem = Literal["not_utf8", "not_json", "not_object"]

# A `\uD800`-`\uDFFF` escape: the only way a lone surrogate (text no database or tokenizer
# can hold) gets into a parsed line, so only lines holding one are walked for it.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class JsonlError(ValueError):
    def __init__(self, line: int, problem: Problem, detail: str):
        super().__init__(f"line {line}: {problem} ({detail})")
        self.line = line  # 1-based
        self.problem = problem
        # not_json: the parser's message and column; not_object: the JSON type found.
        self.detail = detail


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN, Infinity and -Infinity; standard JSON (and PostgreSQL) does not.
    raise ValueError(f"{name} is not standard JSON")


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parse(number: int, raw: bytes, text: str) -> Any:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise JsonlError(number, "not_json", f"{exc.msg} at column {exc.colno}") from None
    except ValueError as exc:
        raise JsonlError(number, "not_json", str(exc)) from None
    except RecursionError:
        # The parser recurses once per level; a line nested that deep is never a chat example.
        raise JsonlError(number, "not_json", "nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(value):
        raise JsonlError(number, "not_json", "a \\u escape encodes a lone surrogate, which is not valid Unicode text")
    return value


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
            value = _parse(number, raw, text)
            if not isinstance(value, dict):
                raise JsonlError(number, "not_object", type(value).__name__)
            yield number, value
