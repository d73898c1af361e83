"""Cursor pagination the way OpenAI lists work: `after` is an object id, `limit` a count,
and the answer says `has_more`. Rows are ordered by their `seq` column, which never ties."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.errors import NotFound

T = TypeVar("T")


async def paginate(
    session: AsyncSession,
    query: Select[tuple[T]],
    model: Any,
    *,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"] = "desc",
    what: str = "object",
) -> tuple[list[T], bool]:
    if after is not None:
        # The cursor must be visible through the same query (same project, same job).
        cursor = (await session.execute(query.with_only_columns(model.seq).where(model.id == after))).scalar()
        if cursor is None:
            raise NotFound(f"No such {what}: '{after}' (the `after` cursor)", param="after")
        query = query.where(model.seq < cursor if order == "desc" else model.seq > cursor)
    query = query.order_by(model.seq.desc() if order == "desc" else model.seq.asc()).limit(limit + 1)
    rows = list((await session.execute(query)).scalars())
    return rows[:limit], len(rows) > limit


def base_select(model: Any) -> Select[Any]:
    return select(model)
