"""The Alembic migrations build exactly the schema the ORM tables describe, and run twice
without harm (every process applies them at start)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import fresh_database_url

import service.core.tables  # noqa: F401  (registers the tables)
from service.core.db import Base, make_engine, run_migrations


async def _schema_diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
    finally:
        await engine.dispose()


def test_migrations_match_the_tables_and_are_repeatable(tmp_path: Path) -> None:
    with fresh_database_url(tmp_path) as url:
        run_migrations(url)
        run_migrations(url)
        assert asyncio.run(_schema_diff(url)) == []
