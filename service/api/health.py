"""Liveness (`/health`, no I/O) and readiness (`/ready`: the database and Redis answer)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from sqlalchemy import text

from service.api.metrics import PROBE_TIMEOUT
from service.core.errors import ServiceUnavailable

log = logging.getLogger("tailor.metrics")

router = APIRouter()


@router.get("/health", include_in_schema=False)
async def health() -> dict[str, str]:
    """Liveness: the process answers (no I/O). Readiness is /ready."""
    return {"status": "ok"}


@router.get("/ready", include_in_schema=False)
async def ready(request: Request) -> dict[str, str]:
    """200 when the database and Redis answer; 503 (OpenAI envelope) naming what did not."""
    app = request.app

    async def database() -> None:
        async with app.state.sessionmaker() as session:
            await session.execute(text("SELECT 1"))

    async def redis() -> None:
        await app.state.redis_probe.ping()

    checks = {"the database": database(), "Redis": redis()}
    results = await asyncio.gather(*(asyncio.wait_for(c, PROBE_TIMEOUT) for c in checks.values()), return_exceptions=True)
    failed = [(name, r) for name, r in zip(checks, results, strict=True) if r is not None]
    for name, exc in failed:
        log.warning("not ready: %s did not answer: %r", name, exc)
    if failed:
        # Details (hosts, ports) go to the log only: /ready answers anyone.
        raise ServiceUnavailable("Not ready: " + "; ".join(f"{n} did not answer ({type(e).__name__})" for n, e in failed) + ".")
    return {"status": "ready"}
