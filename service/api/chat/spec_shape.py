"""vLLM's answers in the shape the official spec gives them.

vLLM writes `null` for fields the spec (CreateChatCompletionResponse, its stream chunks,
CreateCompletionResponse) types as an array or object that may be absent, never null:
`message.annotations`, `function_call`, `tool_calls`, `audio`, `usage.prompt_tokens_details`,
`usage.completion_tokens_details`. The Python SDK tolerates them; strictly typed clients do
not. Here those nulls are dropped, from whole bodies and from every event of a stream, which
is still relayed event by event as vLLM sends it. Bodies without a `null` are passed as they
came, unparsed.
"""

from __future__ import annotations

import json
from typing import Any

ABSENT_NOT_NULL = frozenset(
    {"annotations", "function_call", "tool_calls", "audio", "prompt_tokens_details", "completion_tokens_details"}
)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if not (v is None and k in ABSENT_NOT_NULL)}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def clean_body(body: bytes) -> bytes:
    """A JSON body without the nulls the spec does not allow (anything else: unchanged)."""
    if b"null" not in body:
        return body
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    return json.dumps(_drop_nulls(parsed), ensure_ascii=False, separators=(",", ":")).encode()


class EventCleaner:
    """Feed a server-sent event stream in whatever pieces it arrives; get back whole events,
    each `data:` JSON cleaned as `clean_body` cleans a body."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, piece: bytes) -> bytes:
        data = self._pending + piece
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        self._pending = data[end + 2 :]
        return b"".join(_clean_event(event) + b"\n\n" for event in data[:end].split(b"\n\n"))

    def flush(self) -> bytes:
        """What is left when the stream ends (an unterminated last event), unchanged."""
        rest, self._pending = self._pending, b""
        return rest


def _clean_event(event: bytes) -> bytes:
    if not event.startswith(b"data: ") or b"null" not in event:
        return event
    return b"data: " + clean_body(event[6:])
