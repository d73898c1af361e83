"""Request shapes of the chat gateway (OpenAI spec: CreateChatCompletionRequest,
CreateCompletionRequest).

Only what the gateway itself reads is checked here (`model`, and that the body is the
right kind of request); every other field, standard or vLLM's own, reaches vLLM as the
client sent it, byte for byte, and vLLM validates it. Responses are vLLM's, relayed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.api.fields import NulFreeStr


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = Field(None, description="Send a last chunk with the token usage of the whole request.")


class _GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: NulFreeStr = Field(description="A base model, or one of the project's fine-tuned models or checkpoints (`ft:…`).")
    stream: bool | None = Field(False, description="Stream server-sent events as tokens are generated.")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None


class ChatCompletionCreate(_GenerationRequest):
    messages: list[dict[str, Any]] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(None, ge=0)


class CompletionCreate(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(description="The text (or token ids) to continue.")
