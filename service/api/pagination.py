"""Lists the way OpenAI shapes them: cursor pagination (`after` is an object id, `limit` a
count, the answer says `has_more`) and the list envelopes. Rows are ordered by their `seq`
column, which never ties."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.errors import NotFound

T = TypeVar("T")
Item = TypeVar("Item", bound=BaseModel)


async def paginate(
    session: AsyncSession,
    query: Select[T],
    model: Any,
    *,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"] = "desc",
    what: str = "object",
    keys: Sequence[Any] = (),
) -> tuple[list[T], bool]:
    """One page of `query`, ordered by `keys` (columns) and then `seq`, which never ties."""
    columns = [*keys, model.seq]
    if after is not None:
        # The cursor must be visible through the same query (same project, same job).
        cursor = (await session.execute(query.with_only_columns(*columns).where(model.id == after))).first()
        if cursor is None:
            raise NotFound(f"No such {what}: '{after}' (the `after` cursor)", param="after")
        position, values = tuple_(*columns), tuple_(*cursor)
        query = query.where(position < values if order == "desc" else position > values)
    query = query.order_by(*(c.desc() if order == "desc" else c.asc() for c in columns)).limit(limit + 1)
    rows = list((await session.execute(query)).scalars())
    return rows[:limit], len(rows) > limit


class Page(BaseModel, Generic[Item]):
    """A page of a list: subclass it per item type, so the schema keeps a plain name."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool

    @classmethod
    def of(cls, data: Sequence[Item], has_more: bool) -> Self:
        return cls(data=list(data), has_more=has_more)


class IdPage(Page[Item], Generic[Item]):
    """A page that also names the ids of its first and last items."""

    first_id: str | None
    last_id: str | None

    @classmethod
    def of(cls, data: Sequence[Item], has_more: bool) -> Self:
        ids = [getattr(item, "id") for item in data]  # noqa: B009  (every listed object has an id)
        return cls(data=list(data), has_more=has_more, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None)
