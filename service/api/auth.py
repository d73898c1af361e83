"""API keys and projects. A key is shown once and stored as a SHA-256 hash: keys are long
random strings, so a fast hash is safe, and lookup by hash is one indexed query."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.api.errors import error_responses
from service.api.ttl_cache import TtlCache
from service.core.errors import PermissionDenied, Unauthorized
from service.core.ids import new_id, now
from service.core.tables import ApiKey, Project

KEY_PREFIX = "sk-tailor-"


@dataclass(frozen=True)
class Principal:
    project_id: str
    project_name: str
    admin: bool = False  # the key may manage its project's sharing (checkpoint permissions)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(session: AsyncSession, project_name: str, admin: bool = False) -> tuple[str, Project]:
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
            admin=admin,
        )
    )
    await session.commit()
    return key, project


@dataclass(frozen=True)
class KeyInfo:
    id: str
    project: str
    shown: str  # the key's first characters, enough to tell keys apart
    created_at: int
    revoked_at: int | None
    project_id: str = ""
    admin: bool = False


async def list_keys(session: AsyncSession, project_name: str | None = None) -> list[KeyInfo]:
    query = select(ApiKey, Project.name).join(Project, Project.id == ApiKey.project_id).order_by(ApiKey.created_at)
    if project_name is not None:
        query = query.where(Project.name == project_name)
    return [
        KeyInfo(key.id, name, key.display_prefix + "…", key.created_at, key.revoked_at, key.project_id, key.admin)
        for key, name in (await session.execute(query)).tuples()
    ]


async def _marked_revoked(session: AsyncSession, key_id: str) -> ApiKey | None:
    """The key with id `key_id`, marked revoked (uncommitted; a second revoke keeps the first
    time); None when there is no such key."""
    key = await session.get(ApiKey, key_id)
    if key is not None and key.revoked_at is None:
        key.revoked_at = now()
    return key


async def revoke_key(session: AsyncSession, key_id: str) -> str | None:
    """Revoke the key with id `key_id`; returns its hash (to tell the replicas), None when
    there is no such key."""
    key = await _marked_revoked(session, key_id)
    if key is None:
        return None
    await session.commit()
    return key.key_hash


async def rotate_key(session: AsyncSession, key_id: str) -> tuple[str, str] | None:
    """A new key for the project of `key_id`, which is revoked in the same transaction;
    returns (new key, old key's hash), None when there is no such key."""
    old = await _marked_revoked(session, key_id)
    if old is None:
        return None
    project = await session.get(Project, old.project_id)
    assert project is not None, "a key belongs to a project"
    key, _ = await create_key(session, project.name, old.admin)  # commits both
    return key, old.key_hash


# Key hashes the database confirmed in the last few seconds, with their principal. Every
# authenticated request would otherwise pay a database round trip, which is most of what
# the chat gateway adds to a short completion. A revoked key is dropped from every
# replica's cache at once (revocations.py); should that message be lost, within the TTL.
_verified: TtlCache[str, Principal] = TtlCache(ttl=5.0)


forget_key = _verified.drop  # a revoked key's hash, heard from revocations.py
forget_all_keys = _verified.clear


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
            select(ApiKey.project_id, Project.name, ApiKey.admin)
            .join(Project, Project.id == ApiKey.project_id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
    ).first()
    return Principal(project_id=row[0], project_name=row[1], admin=bool(row[2])) if row is not None else None


def require_admin(principal: Principal) -> None:
    if not principal.admin:
        raise PermissionDenied(
            "This needs an admin key of the project (`tailor keys create --admin --project NAME`).",
            code="insufficient_permissions",
        )


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


class ProjectRef(BaseModel):
    id: str
    name: str


class MeObject(BaseModel):
    """Who a key is: its project (what the dashboard shows), and whether it is an admin key."""

    object: Literal["me"] = "me"
    project: ProjectRef
    admin: bool


router = APIRouter()


@router.get("/me", response_model=MeObject, responses=error_responses(401))
async def me(request: Request) -> MeObject:
    """Tailor's extension, read-only: the project of the key sent (the dashboard shows its name)."""
    principal = await authenticate_lazily(request)
    return MeObject(project=ProjectRef(id=principal.project_id, name=principal.project_name), admin=principal.admin)


BEARER_SCHEME = {"ApiKeyAuth": {"type": "http", "scheme": "bearer", "description": "A project key from `tailor keys create`."}}


def document_bearer_auth(app: FastAPI) -> None:
    """State in the OpenAPI document that every operation takes a bearer key, as OpenAI's
    does. Keys are checked by the routes' own dependency (no FastAPI security class: its
    errors are not the OpenAI envelope), so the document is told here."""
    render = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = render()
            schema.setdefault("components", {})["securitySchemes"] = BEARER_SCHEME
            schema["security"] = [{"ApiKeyAuth": []}]
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
