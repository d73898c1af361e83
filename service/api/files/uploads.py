"""The Uploads API: a large file sent in parts, assembled into one File on completion."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.api.auth import Principal
from service.api.files.schemas import UploadCreate
from service.api.files.service import SCRATCH_PREFIX, create_file, scratch_file
from service.core.db import rows_changed
from service.core.errors import InvalidRequest
from service.core.ids import new_id, now
from service.core.naming import upload_prefix
from service.core.settings import Settings
from service.core.storage import ObjectStore
from service.core.tables import File, Upload, UploadPart


def effective_status(row: Upload) -> str:
    if row.status == "pending" and row.expires_at <= now():
        return "expired"
    return row.status


async def create_upload(session: AsyncSession, principal: Principal, body: UploadCreate, settings: Settings) -> Upload:
    if body.bytes > settings.max_upload_total_bytes:
        raise InvalidRequest(
            f"Invalid value for 'bytes': {body.bytes} is over the limit of {settings.max_upload_total_bytes} bytes.",
            param="bytes",
        )
    created = now()
    row = Upload(
        id=new_id("upload_"),
        project_id=principal.project_id,
        filename=body.filename,
        purpose=body.purpose,
        bytes=body.bytes,
        mime_type=body.mime_type,
        status="pending",
        created_at=created,
        expires_at=created + settings.upload_expiry_seconds,
        file_expires_after=body.expires_after.seconds if body.expires_after else None,
    )
    session.add(row)
    await session.commit()
    return row


def require_pending(row: Upload, action: str) -> None:
    status = effective_status(row)
    if status != "pending":
        raise InvalidRequest(f"Cannot {action} Upload {row.id}: it is {status}. Only pending Uploads accept this.")


async def add_part(session: AsyncSession, store: ObjectStore, row: Upload, path: Path) -> UploadPart:
    require_pending(row, "add a part to")
    part_id = new_id("part_")
    key = upload_prefix(row.id) + part_id
    await asyncio.to_thread(store.put_file, key, path)
    part = UploadPart(id=part_id, upload_id=row.id, bytes=path.stat().st_size, created_at=now(), storage_key=key)
    session.add(part)
    await session.commit()
    return part


def _assemble(store: ObjectStore, keys: list[str], dest: Path) -> str:
    """Concatenate the parts into `dest`, chunk by chunk; return the md5 of the whole."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(dest, "wb") as out:
        for key in keys:
            for chunk in store.iter_chunks(key):
                digest.update(chunk)
                out.write(chunk)
    return digest.hexdigest()


async def complete_upload(
    session: AsyncSession,
    store: ObjectStore,
    principal: Principal,
    row: Upload,
    part_ids: list[str],
    md5: str | None,
) -> File:
    require_pending(row, "complete")
    if not part_ids:
        raise InvalidRequest("Invalid value for 'part_ids': give at least one part id.", param="part_ids")
    if len(set(part_ids)) != len(part_ids):
        raise InvalidRequest("Invalid value for 'part_ids': a part id appears twice.", param="part_ids")
    parts = {p.id: p for p in (await session.execute(select(UploadPart).where(UploadPart.upload_id == row.id))).scalars()}
    unknown = [p for p in part_ids if p not in parts]
    if unknown:
        raise InvalidRequest(f"Invalid value for 'part_ids': {unknown[0]} is not a part of Upload {row.id}.", param="part_ids")
    total = sum(parts[p].bytes for p in part_ids)
    if total != row.bytes:
        raise InvalidRequest(
            f"The parts add up to {total} bytes but the Upload was created for {row.bytes} bytes.",
            param="part_ids",
        )
    # Claim the upload so two concurrent completions cannot both create a file.
    claimed = await session.execute(
        update(Upload).where(Upload.id == row.id, Upload.status == "pending").values(status="completing")
    )
    await session.commit()
    if rows_changed(claimed) != 1:
        raise InvalidRequest(f"Upload {row.id} is already being completed.")
    try:
        with scratch_file(SCRATCH_PREFIX + "upload-") as path:
            actual_md5 = await asyncio.to_thread(_assemble, store, [parts[p].storage_key for p in part_ids], path)
            if md5 is not None and md5.lower() != actual_md5:
                raise InvalidRequest(
                    f"Invalid value for 'md5': the assembled file's MD5 is {actual_md5}, not {md5}.", param="md5"
                )
            file = await create_file(
                session,
                store,
                principal,
                path=path,
                filename=row.filename,
                purpose=row.purpose,
                expires_after_seconds=row.file_expires_after,
            )
    except BaseException:
        await session.rollback()
        await session.execute(update(Upload).where(Upload.id == row.id).values(status="pending"))
        await session.commit()
        raise
    row.status = "completed"
    row.file_id = file.id
    await session.commit()
    await asyncio.to_thread(store.delete_prefix, upload_prefix(row.id))
    return file


async def cancel_upload(session: AsyncSession, store: ObjectStore, row: Upload) -> None:
    require_pending(row, "cancel")
    row.status = "cancelled"
    await session.commit()
    await asyncio.to_thread(store.delete_prefix, upload_prefix(row.id))
