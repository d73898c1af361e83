"""Database engine, sessions and migrations.

SQL is the single source of truth. The same code runs on SQLite (the embedded default) and
PostgreSQL (production); Alembic migrations are applied at start.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import CursorResult, Result, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from service.core.errors import ApiError, BackendUnavailable, InvalidRequest

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


def make_engine(url: str, pool_size: int = 5, max_overflow: int = 10) -> AsyncEngine:
    """`pool_size` connections kept open, `max_overflow` more opened under load (SQLAlchemy's
    defaults: enough for a worker or a CLI; the API asks for more, see Settings)."""
    pool = {"pool_size": pool_size, "max_overflow": max_overflow}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **pool)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while a worker writes; foreign keys are off by default in SQLite.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, **pool)


def database_failure(exc: SQLAlchemyError) -> ApiError | None:
    """What to answer for a database error that is not a bug: a value the database cannot
    hold (PostgreSQL's SQLSTATE class 22, "data exception") is the caller's 400, and a lost
    or refused connection, a restarting server, a locked SQLite file or an exhausted pool is
    a 503 to retry."""
    if isinstance(exc, DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
        if sqlstate.startswith("22"):
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "invalid value"
            return InvalidRequest(f"A value in the request cannot be stored: {reason}.")
        # Lost, refused or restarting (classes 08 and 57: "shutting down", "starting up"), out
        # of connections (53), or a transaction the database gave up on (40): worth a retry.
        if (
            exc.connection_invalidated
            or isinstance(exc, OperationalError | InterfaceError)
            or sqlstate[:2] in ("08", "40", "53", "57")
        ):
            return BackendUnavailable("The database is unavailable. Try again shortly.")
    if isinstance(exc, PoolTimeout):
        return BackendUnavailable("The database is busy: no connection was free in time. Try again shortly.")
    return None


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE changed (what guarded transitions check)."""
    return cast(CursorResult[Any], result).rowcount


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def run_migrations(url: str) -> None:
    """Upgrade the database to the newest revision. Call it where no event loop runs."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


async def run_migrations_async(url: str) -> None:
    # Alembic's env.py drives its own event loop, so it runs in a thread of its own.
    await asyncio.to_thread(run_migrations, url)
