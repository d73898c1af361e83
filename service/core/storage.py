"""Object store for uploaded files, adapters, checkpoints and result files.

Two backends behind one small interface: a local directory (`file:///path`) and any
S3-compatible endpoint (`s3://bucket/prefix`, with `TAILOR_S3_ENDPOINT_URL` for MinIO or
Ceph RGW). Methods are blocking and move data in chunks, never whole objects in memory;
async code calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from service.core.settings import Settings

CHUNK_SIZE = 1024 * 1024


class ObjectNotFound(KeyError):
    pass


def is_store_failure(exc: BaseException) -> bool:
    """Whether `exc` is a store that cannot be written or reached (a full or read-only disk,
    an S3 endpoint down or refusing) rather than a bug: the caller answers 503 and retries."""
    if isinstance(exc, OSError):
        return True
    # botocore is imported only once something failed, as the S3 backend imports it lazily too.
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError | Boto3Error)


class ObjectStore(ABC):
    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store the local file at `path` under `key`, replacing any object there."""

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the object's bytes in chunks; raise ObjectNotFound if it is absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; absent objects are not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove the folder `prefix` (every object under `prefix/`)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str) -> list[str]:
        """Keys under `prefix` (relative to the store), sorted."""
        return [key for key, _ in self.list_dated(prefix)]

    @abstractmethod
    def list_dated(self, prefix: str) -> list[tuple[str, float]]:
        """(key, last modified as a Unix time) for every key under `prefix`, sorted by key."""

    @abstractmethod
    def remove_partials(self, older_than: float) -> int:
        """Remove what writes cut short left (a local `.incoming-*` copy, an S3 multipart
        upload never completed) last touched before `older_than`; return how many."""

    def put_dir(self, prefix: str, directory: Path) -> None:
        """Store every file under `directory` at `prefix` + its relative path."""
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            self.put_file(prefix.rstrip("/") + "/" + path.relative_to(directory).as_posix(), path)

    def download_prefix(self, prefix: str, directory: Path) -> int:
        """Fetch every object under `prefix` into `directory`; return how many."""
        base = prefix.rstrip("/") + "/"
        keys = self.list_keys(base)
        for key in keys:
            self.download(key, directory / key[len(base) :])
        return len(keys)

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile() as tmp:
            tmp.write(data)
            tmp.flush()
            self.put_file(key, Path(tmp.name))

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            with open(partial, "wb") as out:
                for chunk in self.iter_chunks(key):
                    out.write(chunk)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


class LocalObjectStore(ObjectStore):
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"object key escapes the store: {key!r}")
        return path

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copy to a sibling then rename, so a reader never sees half an object.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, CHUNK_SIZE)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115  (closed by the `with` below; a missing file fails before the first chunk)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        with f:
            while chunk := f.read(chunk_size):
                yield chunk

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        base = self._path(prefix.rstrip("/"))
        if base.is_dir():
            shutil.rmtree(base, ignore_errors=True)
        else:
            base.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_dated(self, prefix: str) -> list[tuple[str, float]]:
        root = self.root.resolve()
        # Walk only the directory the prefix names (or its parent when it ends mid-name).
        head = prefix if prefix.endswith("/") else prefix.rpartition("/")[0]
        start = self._path(head.rstrip("/")) if head.strip("/") else root
        if not start.is_dir():
            return []
        return sorted(
            (key, p.stat().st_mtime)
            for p in start.rglob("*")
            if p.is_file() and not p.name.startswith(".incoming-") and (key := p.relative_to(root).as_posix()).startswith(prefix)
        )

    def remove_partials(self, older_than: float) -> int:
        removed = 0
        for path in self.root.rglob(".incoming-*"):
            try:
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass  # finished (renamed) or removed meanwhile
        return removed


class S3ObjectStore(ObjectStore):
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, region: str | None):
        import boto3
        from botocore.config import Config

        # Path-style addressing is what MinIO and Ceph RGW expect behind a plain endpoint.
        config = Config(
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> None:
        # upload_file switches to multipart for large files and streams from disk.
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectNotFound(key) from None
            raise
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        # A folder: "ckpt-step-1" must not take "ckpt-step-10" with it.
        folder = self._key(prefix.rstrip("/")) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def list_dated(self, prefix: str) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            found += [(o["Key"][strip:], o["LastModified"].timestamp()) for o in page.get("Contents", [])]
        return sorted(found)

    def remove_partials(self, older_than: float) -> int:
        removed = 0
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self._key("")):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < older_than:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    removed += 1
        return removed

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise


def open_configured_store(settings: Settings) -> ObjectStore:
    """The store the settings name (TAILOR_STORAGE_URL, TAILOR_S3_ENDPOINT_URL, TAILOR_S3_REGION)."""
    return open_store(settings.resolved_storage_url, s3_endpoint_url=settings.s3_endpoint_url, s3_region=settings.s3_region)


def open_store(url: str, *, s3_endpoint_url: str | None = None, s3_region: str | None = None) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalObjectStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"S3 storage URL needs a bucket: {url!r} (s3://bucket/prefix)")
        return S3ObjectStore(parsed.netloc, parsed.path, s3_endpoint_url, s3_region)
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")
