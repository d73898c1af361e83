"""Field helpers shared by the API's response shapes."""

from __future__ import annotations

from typing import Any

from pydantic import Field


def _is_none(value: object) -> bool:
    return value is None


def absent_if_none(**kwargs: Any) -> Any:
    """A field that defaults to None and is left out of the JSON while it is None: the spec
    types such fields as plain values that may be absent, never null."""
    return Field(None, exclude_if=_is_none, **kwargs)
