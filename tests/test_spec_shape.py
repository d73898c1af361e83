"""Relayed bodies in the spec's shape: vLLM's nulls dropped where the official schemas allow
none, from whole bodies and from stream events however they are split (issue 15, finding 10).
The bodies are as vLLM 0.32 writes them; tests/test_inference_vllm.py checks real ones."""

from __future__ import annotations

import json

import pytest
from spec import validate

from service.api.chat.spec_shape import EventCleaner, clean_body

VLLM_CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1796130659,
    "model": "ft:SmolLM2-135M-Instruct:acme::abc",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Quxville.",
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "total_tokens": 15,
        "completion_tokens": 3,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    },
}

VLLM_CHUNKS = [
    {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1796130659,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "", "tool_calls": None},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    },
    {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1796130659,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "Qux", "function_call": None}, "logprobs": None, "finish_reason": None}],
    },
    {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1796130659,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 5, "total_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": None},
    },
]


def test_a_vllm_chat_body_breaks_the_spec_until_cleaned() -> None:
    raw = json.dumps(VLLM_CHAT).encode()
    with pytest.raises(AssertionError):
        validate(json.loads(raw), "CreateChatCompletionResponse")
    cleaned = json.loads(clean_body(raw))
    validate(cleaned, "CreateChatCompletionResponse")
    assert cleaned["choices"][0]["message"] == {"role": "assistant", "content": "Quxville.", "refusal": None, "tool_calls": []}
    assert cleaned["choices"][0]["logprobs"] is None, "nulls the spec allows stay"


def test_a_body_without_null_is_passed_as_it_came() -> None:
    raw = b'{"id": "x",   "object": "text_completion"}'
    assert clean_body(raw) is raw
    assert clean_body(b"not json, null") == b"not json, null"


@pytest.mark.parametrize("piece", [1, 7, 64, 10_000])
def test_stream_events_are_cleaned_whatever_the_split(piece: int) -> None:
    stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in VLLM_CHUNKS) + b"data: [DONE]\n\n"
    cleaner = EventCleaner()
    out = b"".join(cleaner.feed(stream[i : i + piece]) for i in range(0, len(stream), piece)) + cleaner.flush()
    events = out.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    parsed = [json.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert len(parsed) == len(VLLM_CHUNKS)
    for chunk in parsed:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert parsed[1]["choices"][0]["delta"] == {"content": "Qux"}


def test_an_event_is_sent_as_soon_as_it_is_whole() -> None:
    cleaner = EventCleaner()
    assert cleaner.feed(b'data: {"a": 1}') == b""
    assert cleaner.feed(b"\n\ndata: {") == b'data: {"a": 1}\n\n'
    assert cleaner.flush() == b"data: {"
