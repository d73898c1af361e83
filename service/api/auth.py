"""API keys and projects. A key is shown once and stored as a SHA-256 hash: keys are long
random strings, so a fast hash is safe, and lookup by hash is one indexed query."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.api.ttl_cache import TtlCache
from service.core.errors import Unauthorized
from service.core.ids import new_id, now
from service.core.tables import ApiKey, Project

KEY_PREFIX = "sk-tailor-"


@dataclass(frozen=True)
class Principal:
    project_id: str
    project_name: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(session: AsyncSession, project_name: str) -> tuple[str, Project]:
    """Create a key for `project_name`, creating the project on first use."""
    project = (await session.execute(select(Project).where(Project.name == project_name))).scalar_one_or_none()
    if project is None:
        project = Project(id=new_id("proj_"), name=project_name, created_at=now())
        session.add(project)
        await session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            id=new_id("key_"),
            project_id=project.id,
            key_hash=hash_key(key),
            display_prefix=key[: len(KEY_PREFIX) + 4],
            created_at=now(),
        )
    )
    await session.commit()
    return key, project


# Key hashes the database confirmed in the last few seconds, with their principal. Every
# authenticated request would otherwise pay a database round trip, which is most of what
# the chat gateway adds to a short completion. A key revoked in the database stops working
# within the TTL.
_verified: TtlCache[str, Principal] = TtlCache(ttl=5.0)


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). Create one with `tailor keys create --project NAME`."
        )
    return token.strip()


async def _find(session: AsyncSession, key_hash: str) -> Principal | None:
    row = (
        await session.execute(
            select(ApiKey.project_id, Project.name)
            .join(Project, Project.id == ApiKey.project_id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
    ).first()
    return Principal(project_id=row[0], project_name=row[1]) if row is not None else None


async def _look_up(session: AsyncSession, token: str, key_hash: str) -> Principal:
    principal = await _find(session, key_hash)
    if principal is None:
        shown = token[:8] + "*" * 4 + token[-4:] if len(token) > 12 else "****"
        raise Unauthorized(f"Incorrect API key provided: {shown}. Create a key with `tailor keys create --project NAME`.")
    _verified.put(key_hash, principal)
    return principal


async def authenticate(request: Request, session: AsyncSession) -> Principal:
    token = _bearer_token(request)
    key_hash = hash_key(token)
    return _verified.get(key_hash) or await _look_up(session, token, key_hash)


async def authenticate_lazily(request: Request) -> Principal:
    """`authenticate` for routes that need no database otherwise: a session is opened only
    when the key is not in the cache, and a cached key is re-checked in the background
    before it expires, so steady traffic never waits on the database."""
    token = _bearer_token(request)
    key_hash = hash_key(token)
    sessionmaker = request.app.state.sessionmaker

    async def recheck() -> Principal | None:
        async with sessionmaker() as session:
            return await _find(session, key_hash)

    if (known := _verified.get(key_hash, recheck)) is not None:
        return known
    async with sessionmaker() as session:
        return await _look_up(session, token, key_hash)
