"""Read-only access to Tailor's object store from the vLLM host.

The same URLs and settings as the API and the trainer (`TAILOR_STORAGE_URL`:
`file:///path` or `s3://bucket/prefix`, `TAILOR_S3_ENDPOINT_URL`, `TAILOR_S3_REGION`, and
the usual `AWS_*` credentials). Kept apart from service/core/storage.py on purpose: this runs
inside vLLM's virtualenv, which has neither FastAPI nor the rest of Tailor.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

CHUNK = 1024 * 1024


class AdapterStore(Protocol):
    def exists(self, key: str) -> bool: ...

    def download_prefix(self, prefix: str, directory: Path) -> int:
        """Copy every object under `prefix` (ending in '/') into `directory`; return the bytes."""
        ...


class LocalStore:
    def __init__(self, root: Path):
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"object key escapes the store: {key!r}")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def download_prefix(self, prefix: str, directory: Path) -> int:
        source = self._path(prefix.rstrip("/"))
        total = 0
        if not source.is_dir():
            return 0
        for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".incoming-")):
            target = directory / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            total += target.stat().st_size
        return total


class S3Store:
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, region: str | None):
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def download_prefix(self, prefix: str, directory: Path) -> int:
        folder = self._key(prefix.rstrip("/")) + "/"
        total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(folder) :]
                if not relative or relative.endswith("/") or ".." in relative.split("/"):
                    continue
                target = directory / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"]
                try:
                    with open(target, "wb") as out:
                        out.writelines(body.iter_chunks(CHUNK))
                finally:
                    body.close()
                total += target.stat().st_size
        return total


def open_store(url: str, endpoint_url: str | None = None, region: str | None = None) -> AdapterStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3" and parsed.netloc:
        return S3Store(parsed.netloc, parsed.path, endpoint_url, region)
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")


def store_from_env() -> AdapterStore:
    url = os.environ.get("TAILOR_STORAGE_URL")
    if not url:
        # Tailor's own default: the local store inside its data directory.
        data_dir = Path(os.environ.get("TAILOR_DATA_DIR", ".tailor"))
        url = (data_dir / "objects").resolve().as_uri()
    return open_store(url, os.environ.get("TAILOR_S3_ENDPOINT_URL") or None, os.environ.get("TAILOR_S3_REGION") or None)
