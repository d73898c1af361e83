"""Files: bytes in the object store, metadata in SQL, always scoped to the caller's project."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import Principal, PrincipalDep
from service.db import SessionDep
from service.errors import InvalidRequest, NotFound
from service.ids import new_id, now
from service.pagination import paginate
from service.storage import CHUNK_SIZE, ObjectStore
from service.tables import File

# Purposes whose content is parsed before the file is accepted.
JSONL_PURPOSES = {"fine-tune", "batch", "evals"}


def file_storage_key(project_id: str, file_id: str) -> str:
    return f"files/{project_id}/{file_id}"


def check_jsonl(path: Path) -> int:
    """Check that every non-blank line is a JSON object; return the number of lines.

    Raises InvalidRequest naming the first bad line (1-based), read line by line so a
    large file never sits in memory.
    """
    count = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(
                    f"Invalid file format: line {number} is not UTF-8 text. Fine-tuning files must be JSONL.",
                    param="file",
                    code="invalid_file_format",
                ) from None
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"Invalid file format: line {number} is not valid JSON ({exc.msg} at column {exc.colno}). "
                    "Each line must be one JSON object.",
                    param="file",
                    code="invalid_file_format",
                ) from None
            if not isinstance(value, dict):
                raise InvalidRequest(
                    f"Invalid file format: line {number} is a JSON {type(value).__name__}, not an object. "
                    "Each line must be one JSON object.",
                    param="file",
                    code="invalid_file_format",
                )
            count += 1
    if count == 0:
        raise InvalidRequest(
            "Invalid file format: the file has no lines. Each line must be one JSON object.",
            param="file",
            code="invalid_file_format",
        )
    return count


@contextmanager
def scratch_file(prefix: str = "tailor-") -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=prefix)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def copy_to_path(src, dest: Path) -> int:  # type: ignore[no-untyped-def]
    """Copy a file object to `dest` in chunks; return the byte count."""
    with open(dest, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK_SIZE)
        return out.tell()


async def create_file(
    session: AsyncSession,
    store: ObjectStore,
    principal: Principal,
    *,
    path: Path,
    filename: str,
    purpose: str,
    expires_after_seconds: int | None,
) -> File:
    """Validate the bytes at `path`, store them, then record the file.

    The object is written before the row, so a crash leaves at worst an orphan object,
    never a row that points at nothing.
    """
    if purpose in JSONL_PURPOSES:
        await asyncio.to_thread(check_jsonl, path)
    created = now()
    file_id = new_id("file-")
    key = file_storage_key(principal.project_id, file_id)
    await asyncio.to_thread(store.put_file, key, path)
    row = File(
        id=file_id,
        project_id=principal.project_id,
        filename=filename,
        purpose=purpose,
        bytes=path.stat().st_size,
        created_at=created,
        expires_at=created + expires_after_seconds if expires_after_seconds else None,
        status="processed",
        storage_key=key,
    )
    session.add(row)
    try:
        await session.commit()
    except BaseException:
        await asyncio.to_thread(store.delete, key)
        raise
    return row


def _visible_files(project_id: str):  # type: ignore[no-untyped-def]
    # An expired file is gone as far as the API is concerned.
    return select(File).where(
        File.project_id == project_id, or_(File.expires_at.is_(None), File.expires_at > now())
    )


async def find_file(session: AsyncSession, project_id: str, file_id: str) -> File | None:
    return (await session.execute(_visible_files(project_id).where(File.id == file_id))).scalar_one_or_none()


async def list_files(
    session: AsyncSession,
    principal: Principal,
    *,
    purpose: str | None,
    limit: int,
    order: Literal["asc", "desc"],
    after: str | None,
) -> tuple[list[File], bool]:
    query = _visible_files(principal.project_id)
    if purpose:
        query = query.where(File.purpose == purpose)
    return await paginate(session, query, File, after=after, limit=limit, order=order, what="file")


async def delete_file(session: AsyncSession, store: ObjectStore, row: File) -> None:
    # The row goes first: once the API no longer shows the file, removing its bytes is safe.
    key = row.storage_key
    await session.delete(row)
    await session.commit()
    await asyncio.to_thread(store.delete, key)


async def owned_file(file_id: str, session: SessionDep, principal: PrincipalDep) -> File:
    """The caller's file, or 404 exactly as if it did not exist."""
    row = await find_file(session, principal.project_id, file_id)
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="id")
    return row


OwnedFileDep = Annotated[File, Depends(owned_file)]
