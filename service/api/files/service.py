"""Files: bytes in the object store, metadata in SQL, always scoped to the caller's project."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from service.api.auth import Principal
from service.api.files.schemas import JSONL_PURPOSES
from service.api.lookups import visible_files
from service.api.pagination import paginate
from service.core.errors import InvalidRequest
from service.core.ids import new_id, now
from service.core.jsonl import JsonlError, iter_objects
from service.core.naming import file_key
from service.core.storage import CHUNK_SIZE, ObjectStore
from service.core.tables import File


def check_jsonl(path: Path) -> int:
    """Check that every non-blank line is a JSON object; return the number of lines.

    Raises InvalidRequest naming the first bad line (1-based)."""
    try:
        count = sum(1 for _ in iter_objects(path))
    except JsonlError as exc:
        reason = {
            "not_utf8": "is not UTF-8 text. Fine-tuning files must be JSONL.",
            "not_json": f"is not valid JSON ({exc.detail}). Each line must be one JSON object.",
            "not_object": f"is a JSON {exc.detail}, not an object. Each line must be one JSON object.",
        }[exc.problem]
        raise InvalidRequest(f"Invalid file format: line {exc.line} {reason}", param="file", code="invalid_file_format") from None
    if count == 0:
        raise InvalidRequest(
            "Invalid file format: the file has no lines. Each line must be one JSON object.",
            param="file",
            code="invalid_file_format",
        )
    return count


# Scratch files a killed process leaves in the temporary directory carry this prefix, so the
# janitor can find them (janitor.py).
SCRATCH_PREFIX = "tailor-scratch-"


@contextmanager
def scratch_file(prefix: str = SCRATCH_PREFIX) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=prefix)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def copy_to_path(src: BinaryIO, dest: Path) -> int:
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
    key = file_key(principal.project_id, file_id)
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


async def list_files(
    session: AsyncSession,
    principal: Principal,
    *,
    purpose: str | None,
    limit: int,
    order: Literal["asc", "desc"],
    after: str | None,
) -> tuple[list[File], bool]:
    query = visible_files(principal.project_id)
    if purpose:
        query = query.where(File.purpose == purpose)
    return await paginate(session, query, File, after=after, limit=limit, order=order, what="file")


async def delete_file(session: AsyncSession, store: ObjectStore, row: File) -> None:
    # The bytes go first: if the store fails, the row stays and the delete can be retried;
    # the other way round a failure would leave bytes no row points at.
    await asyncio.to_thread(store.delete, row.storage_key)
    await session.delete(row)
    await session.commit()
