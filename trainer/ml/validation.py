"""Checks for one line of an OpenAI fine-tuning JSONL file, chat or preference (DPO).

Each check raises `FieldError` naming the field (`messages[1].role`); the reader in
data.py adds the line number and the error code, so the messages read like OpenAI's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "refusal"}
CHAT_KEYS = {"messages", "tools", "parallel_tool_calls"}
PREFERENCE_KEYS = {"input", "preferred_output", "non_preferred_output"}
PREFERENCE_INPUT_KEYS = {"messages", "tools", "parallel_tool_calls"}


class FieldError(ValueError):
    """One problem in one example; the text names the field and says what is expected."""


@dataclass
class Message:
    """A message as the chat template receives it (content always a string)."""

    role: str
    content: str
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass
class ChatExample:
    line: int
    messages: list[Message]
    trainable: list[bool]  # per message: an assistant message with weight 1
    tools: list[dict[str, Any]] | None = None


@dataclass
class PreferenceExample:
    line: int
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    tools: list[dict[str, Any]] | None = field(default=None)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)


def _content(raw: dict[str, Any], where: str, optional: bool) -> str:
    content = raw.get("content")
    if content is None:
        if optional:
            return ""
        raise FieldError(f"{where}.content is missing; {raw.get('role')} messages need text content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text can be trained here
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise FieldError(f'{where}.content[{j}] must be a text part {{"type": "text", "text": ...}}')
            texts.append(part["text"])
        return "".join(texts)
    raise FieldError(f"{where}.content must be a string, not {_kind(content)}")


def _tool_calls(raw: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise FieldError(f"{where}.tool_calls must be a non-empty list")
    calls = []
    for j, call in enumerate(raw):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise FieldError(f"{at} must be an object")
        fn = call.get("function")
        if call.get("type", "function") != "function" or not isinstance(fn, dict):
            raise FieldError(f'{at} must be {{"type": "function", "function": {{"name", "arguments"}}}}')
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise FieldError(f"{at}.function.name must be a non-empty string")
        if not isinstance(fn.get("arguments"), str):
            raise FieldError(f"{at}.function.arguments must be a string (JSON-encoded arguments)")
        calls.append({"id": str(call.get("id", f"call_{j}")), "type": "function", "function": fn})
    return calls


def check_message(raw: object, where: str) -> tuple[Message, bool]:
    """A validated message and whether it is trained on (assistant, weight 1)."""
    if not isinstance(raw, dict):
        raise FieldError(f"{where} must be an object, not {_kind(raw)}")
    role = raw.get("role")
    if role is None:
        raise FieldError(f"{where}.role is missing")
    if role not in ROLES:
        raise FieldError(f"{where}.role {role!r} is not one of {', '.join(ROLES)}")
    unknown = sorted(set(raw) - MESSAGE_KEYS)
    if unknown:
        raise FieldError(f"{where} has unknown field {unknown[0]!r}")
    weight = raw.get("weight", 1)
    if "weight" in raw and role != "assistant":
        raise FieldError(f"{where}.weight is only allowed on assistant messages")
    if isinstance(weight, bool) or weight not in (0, 1):
        raise FieldError(f"{where}.weight must be 0 or 1, not {weight!r}")
    if "tool_calls" in raw and role != "assistant":
        raise FieldError(f"{where}.tool_calls is only allowed on assistant messages")
    calls = _tool_calls(raw["tool_calls"], where) if "tool_calls" in raw else None
    content = _content(raw, where, optional=calls is not None)
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise FieldError(f"{where}.name must be a string")
    call_id = raw.get("tool_call_id")
    if call_id is not None and not isinstance(call_id, str):
        raise FieldError(f"{where}.tool_call_id must be a string")
    if role == "tool" and call_id is None:
        raise FieldError(f"{where}.tool_call_id is missing; a tool message answers the assistant's tool call of that id")
    message = Message(role=role, content=content, name=name, tool_calls=calls, tool_call_id=call_id)
    return message, role == "assistant" and weight == 1


def check_tools(raw: object) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise FieldError(f"tools must be a list, not {_kind(raw)}")
    for j, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise FieldError(f'tools[{j}] must be {{"type": "function", "function": {{"name": ...}}}}')
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise FieldError(f"tools[{j}].function.parameters must be a JSON schema object")
    return raw


def _messages(raw: object, where: str) -> tuple[list[Message], list[bool]]:
    if raw is None:
        raise FieldError(f"missing '{where}'")
    if not isinstance(raw, list) or not raw:
        raise FieldError(f"{where} must be a non-empty list of messages")
    checked = [check_message(m, f"{where}[{i}]") for i, m in enumerate(raw)]
    return [m for m, _ in checked], [t for _, t in checked]


def _parallel_tool_calls(obj: dict[str, Any], where: str = "") -> None:
    value = obj.get("parallel_tool_calls")
    if value is not None and not isinstance(value, bool):
        raise FieldError(f"{where}parallel_tool_calls must be true or false, not {_kind(value)}")


def _unknown_keys(obj: dict[str, Any], allowed: set[str], where: str = "") -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise FieldError(f"{where}unknown field {unknown[0]!r}")


def check_chat(obj: dict[str, Any], line: int) -> ChatExample:
    if PREFERENCE_KEYS & set(obj):
        raise FieldError(
            "this is a preference (DPO) example (it has input/preferred_output), but the job's method is "
            "supervised; create the job with method type 'dpo', or upload {\"messages\": [...]} examples"
        )
    if "prompt" in obj or "completion" in obj:
        raise FieldError('prompt/completion is the legacy format; write each example as {"messages": [...]}')
    _unknown_keys(obj, CHAT_KEYS)
    _parallel_tool_calls(obj)
    messages, trainable = _messages(obj.get("messages"), "messages")
    # An example with no trainable assistant message is skipped and reported (data.py), not
    # refused: only a file with none at all cannot train.
    return ChatExample(line=line, messages=messages, trainable=trainable, tools=check_tools(obj.get("tools")))


def _output(raw: object, where: str) -> list[Message]:
    messages, _ = _messages(raw, where)
    for i, m in enumerate(messages):
        if m.role != "assistant":
            raise FieldError(f"{where}[{i}].role must be 'assistant', not {m.role!r}")
    return messages


def check_preference(obj: dict[str, Any], line: int) -> PreferenceExample:
    if "messages" in obj:
        raise FieldError(
            "this is a supervised (chat) example (it has messages), but the job's method is dpo; create the job "
            'with method type \'supervised\', or write {"input", "preferred_output", "non_preferred_output"}'
        )
    _unknown_keys(obj, PREFERENCE_KEYS)
    inp = obj.get("input")
    if not isinstance(inp, dict):
        raise FieldError("input must be an object with messages" if inp is not None else "missing 'input'")
    _unknown_keys(inp, PREFERENCE_INPUT_KEYS, "input has ")
    _parallel_tool_calls(inp, "input.")
    prompt, _ = _messages(inp.get("messages"), "input.messages")
    return PreferenceExample(
        line=line,
        prompt=prompt,
        chosen=_output(obj.get("preferred_output"), "preferred_output"),
        rejected=_output(obj.get("non_preferred_output"), "non_preferred_output"),
        tools=check_tools(inp.get("tools")),
    )
