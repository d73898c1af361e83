"""The janitor: what crashes and expiry leave behind, removed.

- expired Files: their bytes, then their rows (the API hid them already);
- expired Uploads, and finished ones whose parts are still stored: the parts' bytes and rows;
- objects no row points at (an API killed between writing a file's bytes and committing its
  row, or between deleting a row's bytes and the row);
- partial objects (a local `.incoming-*` copy, an S3 multipart upload cut short) and scratch
  files in the temporary directory (`tailor-scratch-*`, the spooled body of an upload);
- idempotency keys older than a day (api/idempotency.py).

Every step is idempotent, so several API replicas may sweep at once. What is younger than
the grace period is never an orphan: a file's bytes are written before its row commits.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.api import idempotency
from service.api.files.service import SCRATCH_PREFIX, delete_file
from service.core.db import rows_changed
from service.core.ids import now
from service.core.naming import upload_prefix
from service.core.storage import ObjectStore, is_store_failure
from service.core.tables import File, IdempotencyKey, Upload, UploadPart

log = logging.getLogger("tailor.janitor")

BATCH = 500


@dataclass
class Sweep:
    expired_files: int = 0
    expired_uploads: int = 0
    orphan_objects: int = 0
    partial_objects: int = 0
    scratch_files: int = 0
    expired_idempotency_keys: int = 0

    def summary(self) -> str:
        return ", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in asdict(self).items())


async def sweep(
    sessionmaker: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    *,
    grace_seconds: float,
    scratch_dir: Path | None = None,
) -> Sweep:
    cutoff = time.time() - grace_seconds
    done = Sweep()
    async with sessionmaker() as session:
        done.expired_files = await _expired_files(session, store)
        done.expired_uploads = await _expired_uploads(session, store)
        done.orphan_objects = await _orphans(session, store, cutoff)
        done.expired_idempotency_keys = await _expired_idempotency_keys(session)
    done.partial_objects = await asyncio.to_thread(store.remove_partials, cutoff)
    done.scratch_files = await asyncio.to_thread(_old_scratch, scratch_dir or Path(tempfile.gettempdir()), cutoff)
    return done


async def _expired_files(session: AsyncSession, store: ObjectStore) -> int:
    removed = 0
    while rows := list((await session.execute(select(File).where(File.expires_at <= now()).limit(BATCH))).scalars()):
        for row in rows:
            await delete_file(session, store, row)
            removed += 1
    return removed


async def _expired_uploads(session: AsyncSession, store: ObjectStore) -> int:
    """Uploads that will never complete (expired, cancelled) or did, with parts still stored."""
    finished = or_(
        Upload.status.in_(["completed", "cancelled", "expired"]), (Upload.status == "pending") & (Upload.expires_at <= now())
    )
    query = select(Upload.id).where(finished, Upload.id.in_(select(UploadPart.upload_id))).limit(BATCH)
    removed = 0
    while upload_ids := list((await session.execute(query)).scalars()):
        for upload_id in upload_ids:
            await asyncio.to_thread(store.delete_prefix, upload_prefix(upload_id))
            await session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
            await session.execute(
                update(Upload).where(Upload.id == upload_id, Upload.status == "pending").values(status="expired")
            )
            await session.commit()
            removed += 1
    return removed


async def _orphans(session: AsyncSession, store: ObjectStore, cutoff: float) -> int:
    removed = 0
    for prefix, column in (("files/", File.storage_key), ("uploads/", UploadPart.storage_key)):
        old = [key for key, modified in await asyncio.to_thread(store.list_dated, prefix) if modified < cutoff]
        for start in range(0, len(old), BATCH):
            batch = old[start : start + BATCH]
            known = set((await session.execute(select(column).where(column.in_(batch)))).scalars())
            for key in batch:
                if key not in known:
                    await asyncio.to_thread(store.delete, key)
                    removed += 1
    return removed


async def _expired_idempotency_keys(session: AsyncSession) -> int:
    gone = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now() - idempotency.KEEP_SECONDS))
    await session.commit()
    return rows_changed(gone)


def _old_scratch(directory: Path, cutoff: float) -> int:
    removed = 0
    for path in directory.glob(SCRATCH_PREFIX + "*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass  # its request finished meanwhile
    return removed


async def sweep_forever(
    sessionmaker: async_sessionmaker[AsyncSession], store: ObjectStore, *, interval: float, grace_seconds: float
) -> None:
    """The API's janitor: a sweep every `interval` (the first one `interval` after start, so a
    fleet restarting together does not sweep at once; `tailor janitor` sweeps on demand)."""
    while True:
        await asyncio.sleep(interval)
        try:
            done = await sweep(sessionmaker, store, grace_seconds=grace_seconds)
            if any(asdict(done).values()):
                log.info("janitor: %s", done.summary())
        except Exception as exc:
            if not is_store_failure(exc):
                log.exception("janitor: sweep failed")
            else:
                log.warning("janitor: the store is unavailable (%r); next sweep in %.0f s", exc, interval)
