"""A ~1 GB fine-tuning file through `POST /v1/files` and back, while the server's memory is
watched: the body must stream to disk (and the JSONL check read it line by line), never sit
in memory. Prints the peak RSS and timings (`pytest -s` shows them)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import openai
import psutil
import pytest
from conftest import running_server

pytestmark = pytest.mark.slow

TARGET_BYTES = 1024**3  # 1 GiB
LIMIT_BYTES = 1_200_000_000
RSS_CEILING = 300 * 1024**2


class RssSampler:
    """Samples the RSS of a process and its children every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._rss())
                self.samples += 1
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def write_big_jsonl(path: Path, target: int) -> tuple[int, str]:
    """Write valid JSONL of about `target` bytes in 1 MB blocks; return (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    block_no = 0
    with open(path, "wb") as out:
        while size < target:
            lines = []
            for i in range(1000):
                n = block_no * 1000 + i
                lines.append(
                    json.dumps(
                        {
                            "messages": [
                                {"role": "system", "content": "You are a terse assistant. " * 12},
                                {"role": "user", "content": f"Line {n}: what is {n} plus one?"},
                                {"role": "assistant", "content": f"{n + 1}. " + "x" * 600},
                            ]
                        }
                    )
                )
            block = ("\n".join(lines) + "\n").encode()
            out.write(block)
            digest.update(block)
            size += len(block)
            block_no += 1
    return size, digest.hexdigest()


@pytest.fixture(scope="module")
def big_server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A server (local store in its own data dir) that takes files up to 1.2 GB."""
    data_dir = tmp_path_factory.mktemp("large-upload")
    try:
        with running_server({**server_env, "TAILOR_MAX_UPLOAD_BYTES": str(LIMIT_BYTES)}, data_dir) as big:
            yield big, big.create_key("large-upload")
    finally:
        shutil.rmtree(data_dir / "objects", ignore_errors=True)


def test_one_gigabyte_upload_stays_small_in_memory(big_server: tuple[Any, str], tmp_path: Path) -> None:
    srv, key = big_server
    path = tmp_path / "big.jsonl"
    try:
        started = time.monotonic()
        size, sha = write_big_jsonl(path, TARGET_BYTES)
        wrote_s = time.monotonic() - started
        assert TARGET_BYTES <= size < LIMIT_BYTES

        with openai.OpenAI(api_key=key, base_url=srv.base_url, max_retries=0, timeout=900) as client:
            with RssSampler(srv.pid) as upload_rss, open(path, "rb") as f:
                t0 = time.monotonic()
                created = client.files.create(file=f, purpose="fine-tune")
                upload_s = time.monotonic() - t0
            assert created.bytes == size
            assert created.filename == "big.jsonl"
            assert client.files.retrieve(created.id).bytes == size

            headers = {"Authorization": f"Bearer {key}"}
            digest = hashlib.sha256()
            got = 0
            with httpx.Client(timeout=900) as http, RssSampler(srv.pid) as download_rss:
                t0 = time.monotonic()
                with http.stream("GET", f"{srv.base_url}/files/{created.id}/content", headers=headers) as resp:
                    assert resp.status_code == 200
                    assert resp.headers["content-length"] == str(size)
                    for chunk in resp.iter_bytes(1024 * 1024):
                        digest.update(chunk)
                        got += len(chunk)
                download_s = time.monotonic() - t0
            assert got == size
            assert digest.hexdigest() == sha

            assert client.files.delete(created.id).deleted is True

        print(
            f"\n[large upload] {size / 1e9:.3f} GB: wrote in {wrote_s:.1f}s, uploaded in {upload_s:.1f}s "
            f"(peak server RSS {upload_rss.peak / 1024**2:.1f} MiB over {upload_rss.samples} samples), "
            f"downloaded in {download_s:.1f}s (peak server RSS {download_rss.peak / 1024**2:.1f} MiB)"
        )
        assert upload_rss.samples > 10
        assert upload_rss.peak < RSS_CEILING, f"peak RSS during upload {upload_rss.peak / 1024**2:.1f} MiB"
        assert download_rss.peak < RSS_CEILING, f"peak RSS during download {download_rss.peak / 1024**2:.1f} MiB"
    finally:
        path.unlink(missing_ok=True)
