"""Render a conversation with the model's own chat template and mark the tokens to train on.

Templates rarely carry `{% generation %}` markers (SmolLM2's does not), so
`return_assistant_tokens_mask` cannot be relied on. Instead each trained assistant
message's character span is found by rendering the conversation up to it (with the
generation prompt: where the reply starts) and up to and including it (where the reply
ends), and the full text is tokenized once with offsets. A template that renders a prefix
differently from the same part of the full conversation (some drop earlier reasoning) is
handled by taking the common prefix. The end-of-turn token is trained (the model must learn
to stop); whitespace the template puts after it is not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from trainer.ml.validation import Message

IGNORE = -100


class TemplateError(ValueError):
    """The tokenizer's chat template cannot render this conversation."""


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # token id where trained, IGNORE elsewhere

    @property
    def n_trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


class ChatRenderer:
    """Wraps a tokenizer; adapts OpenAI messages to what its template understands."""

    def __init__(self, tokenizer: Any):
        template = tokenizer.chat_template
        if not isinstance(template, str) or not template:
            raise TemplateError("the base model's tokenizer has no chat template; chat fine-tuning needs one")
        self.tokenizer = tokenizer
        # Templates that ignore these features would silently drop them; fold them into text
        # instead (the Hermes `<tool_call>` convention, which vLLM's tool parsers read).
        self.knows_tool_calls = "tool_calls" in template
        self.knows_tools = re.search(r"\btools\b", template) is not None
        self.knows_developer = "developer" in template

    def _adapt(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            d = m.as_dict()
            if m.role == "developer" and not self.knows_developer:
                d["role"] = "system"  # OpenAI treats developer as the system prompt
            if m.tool_calls and not self.knows_tool_calls:
                calls = "\n".join(_tool_call_text(c["function"]) for c in m.tool_calls)
                d["content"] = f"{d['content']}\n{calls}" if d["content"] else calls
                del d["tool_calls"]
            out.append(d)
        if tools and not self.knows_tools:
            listing = "You can call these tools:\n<tools>\n" + "\n".join(json.dumps(t) for t in tools) + "\n</tools>"
            if out and out[0]["role"] == "system":
                out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{listing}"}
            else:
                out.insert(0, {"role": "system", "content": listing})
        return out

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, prompt: bool) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                tools=tools if self.knows_tools else None,
                tokenize=False,
                add_generation_prompt=prompt,
            )
        except Exception as exc:  # jinja raises whatever the template's author chose
            raise TemplateError(f"the model's chat template cannot render this conversation: {exc}") from exc
        return str(text)

    def tokenize(self, messages: list[Message], trainable: list[bool], tools: list[dict[str, Any]] | None) -> Tokenized:
        """Token ids of the whole conversation; labels on the trainable messages only."""
        adapted = self._adapt(messages, tools)
        shift = len(adapted) - len(messages)  # a system message may have been inserted
        full = self.render(adapted, tools, prompt=False)
        spans = []
        for i, train in enumerate(trainable):
            if train:
                start = _common_prefix(self.render(adapted[: i + shift], tools, prompt=True), full)
                end = _common_prefix(self.render(adapted[: i + shift + 1], tools, prompt=False), full)
                while end > start and full[end - 1].isspace():
                    end -= 1
                if end > start:
                    spans.append((start, end))
        return self._label(full, spans)

    def _label(self, full: str, spans: list[tuple[int, int]]) -> Tokenized:
        if not getattr(self.tokenizer, "is_fast", False):
            return self._label_slow(full, spans)
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        marked = [0] * len(full)
        for start, end in spans:
            marked[start:end] = [1] * (end - start)
        before = [0, *accumulate(marked)]  # before[k]: marked characters in full[:k]
        labels = [
            tok if b > a and before[b] - before[a] > 0 else IGNORE for tok, (a, b) in zip(ids, enc["offset_mapping"], strict=True)
        ]
        return Tokenized(input_ids=ids, labels=labels)

    def _label_slow(self, full: str, spans: list[tuple[int, int]]) -> Tokenized:
        """Without offsets: count the tokens of each span's text prefix."""

        def count(text: str) -> int:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

        ids: list[int] = list(self.tokenizer(full, add_special_tokens=False)["input_ids"])
        labels = [IGNORE] * len(ids)
        for start, end in spans:
            for t in range(count(full[:start]), min(count(full[:end]), len(ids))):
                labels[t] = ids[t]
        return Tokenized(input_ids=ids, labels=labels)


def _tool_call_text(function: dict[str, Any]) -> str:
    payload = json.dumps({"name": function["name"], "arguments": function["arguments"]})
    return f"<tool_call>\n{payload}\n</tool_call>"


def _common_prefix(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
