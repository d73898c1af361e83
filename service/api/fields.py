"""Field helpers shared by the API's request and response shapes."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

NUL_MESSAGE = "contains a NUL character (\\u0000), which Tailor does not accept in text"


def _is_none(value: object) -> bool:
    return value is None


def absent_if_none(**kwargs: Any) -> Any:
    """A field that defaults to None and is left out of the JSON while it is None: the spec
    types such fields as plain values that may be absent, never null."""
    return Field(None, exclude_if=_is_none, **kwargs)


def holds_nul(value: Any) -> bool:
    """Whether a string in `value` (a string, or lists and dicts of them) holds a NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(holds_nul(v) for v in value)
    return False


def _refuse_nul(value: Any) -> Any:
    if holds_nul(value):
        raise PydanticCustomError("string_nul", NUL_MESSAGE)
    return value


class RequestBody(BaseModel):
    """Base of every JSON request body: strict types (`true` is not 1, "3" is not 3), unknown
    fields, NaN and infinities (Python's JSON parser reads `1e400` as infinity) and NUL
    characters (PostgreSQL cannot store them) are refused as 400s naming the field, before
    anything reaches the database."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # Nested models ran this on their own fields already; only plain values are walked.
        return value if isinstance(value, BaseModel) else _refuse_nul(value)


# For a string field of a body that is not a RequestBody (the chat bodies, relayed to vLLM as sent).
NulFreeStr = Annotated[str, AfterValidator(_refuse_nul)]


METADATA_MAX_PAIRS = 16


def _metadata_limits(value: dict[str, str]) -> dict[str, str]:
    if len(value) > METADATA_MAX_PAIRS:
        raise ValueError(f"metadata may hold at most {METADATA_MAX_PAIRS} pairs")
    for key, text in value.items():
        if len(key) > 64:
            raise ValueError(f"metadata key '{key[:20]}…' is longer than 64 characters")
        if len(text) > 512:
            raise ValueError(f"metadata value for '{key}' is longer than 512 characters")
    return value


# The spec's Metadata: up to 16 string pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[dict[str, str], AfterValidator(_metadata_limits)]
