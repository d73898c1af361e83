"""A bounded local cache of adapters on the vLLM host, least recently used out first.

Everything lives on disk, so several vLLM API processes on one host share it: an entry is
`entries/{hash}/` holding the adapter's files and a marker written last (an entry without
its marker is not there). The marker's mtime is the entry's last use. Downloads go to
`tmp/` and are renamed into place under a per-entry file lock, and evictions rename the
entry into `trash/` before deleting it, so vLLM never reads half an adapter.

vLLM re-reads an adapter from its path whenever it drops it from its own memory cache, so
files may only go once vLLM has forgotten the adapter: `make_room` unloads first, then
deletes.

Hits, misses and evictions are counted with prometheus_client when it is importable (vLLM
depends on it), on its default registry, which vLLM's own /metrics serves (in multiprocess
mode too: the counters are made at import, after vLLM set PROMETHEUS_MULTIPROC_DIR).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tailor.vllm_plugin.cache")


class _NoCounter:
    def inc(self, amount: float = 1) -> None:
        pass


def _counter(name: str, documentation: str) -> Any:
    try:
        from prometheus_client import Counter
    except ImportError:  # the plugin works without metrics
        return _NoCounter()
    return Counter(name, documentation)


HITS = _counter("tailor_adapter_cache_hits", "Adapters resolved from the local cache, without a download.")
MISSES = _counter("tailor_adapter_cache_misses", "Adapters downloaded from the object store into the local cache.")
EVICTIONS = _counter(
    "tailor_adapter_cache_evictions", "Adapters whose files left the local cache (least recently used, or deleted)."
)

MARKER = ".tailor-adapter.json"

Unload = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    bytes: int
    last_used: float


class AdapterCache:
    def __init__(self, root: Path, max_bytes: int, grace_seconds: float = 30.0):
        self.root = root.expanduser().resolve()
        self.max_bytes = max_bytes
        # An adapter used this recently is never evicted: a request may still be on it.
        self.grace_seconds = grace_seconds
        for sub in ("entries", "locks", "tmp", "trash"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _key(name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()[:40]

    def _dir(self, name: str) -> Path:
        return self.root / "entries" / self._key(name)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        with open(self.root / "locks" / f"{self._key(name)}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, name: str) -> Path | None:
        directory = self._dir(name)
        return directory if (directory / MARKER).is_file() else None

    def touch(self, name: str) -> None:
        """Mark an adapter as just used (a cheap utime; nothing happens if it is not cached)."""
        try:
            os.utime(self._dir(name) / MARKER)
        except OSError:
            pass

    def fetch(self, name: str, download: Callable[[Path], int]) -> Path:
        """The adapter's local directory, downloading it with `download(dir) -> bytes` if absent."""
        with self._locked(name):
            if (found := self.get(name)) is not None:
                self.touch(name)
                HITS.inc()
                return found
            MISSES.inc()
            tmp = Path(tempfile.mkdtemp(prefix=f"{self._key(name)}-", dir=self.root / "tmp"))
            try:
                size = download(tmp)
                if not (tmp / "adapter_config.json").is_file():
                    raise FileNotFoundError(f"adapter {name!r} has no adapter_config.json in the store")
                (tmp / MARKER).write_text(json.dumps({"name": name, "bytes": size, "fetched_at": time.time()}))
                target = self._dir(name)
                if target.exists():  # a half-written leftover of a crashed process
                    self._discard(target)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return target

    def _discard(self, directory: Path) -> None:
        trash = self.root / "trash" / f"{directory.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            directory.rename(trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def evict(self, name: str) -> bool:
        """Delete an adapter's files. Only call it once vLLM has unloaded the adapter."""
        with self._locked(name):
            directory = self._dir(name)
            if not directory.exists():
                return False
            self._discard(directory)
            EVICTIONS.inc()
            log.info("evicted adapter %s from the local cache", name)
            return True

    def entries(self) -> list[Entry]:
        out = []
        for directory in (self.root / "entries").iterdir():
            try:
                marker = directory / MARKER
                meta = json.loads(marker.read_text())
                out.append(Entry(meta["name"], directory, int(meta["bytes"]), marker.stat().st_mtime))
            except (OSError, ValueError, KeyError):
                continue  # being written or being evicted
        return out

    def victims(self, keep: set[str]) -> list[Entry]:
        """Entries to evict, least recently used first, to bring the cache under its bound."""
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        excess = sum(e.bytes for e in entries) - self.max_bytes
        cutoff = time.time() - self.grace_seconds
        chosen = []
        for entry in entries:
            if excess <= 0:
                break
            if entry.name in keep or entry.last_used > cutoff:
                continue
            chosen.append(entry)
            excess -= entry.bytes
        if excess > 0:
            log.warning("adapter cache is %d bytes over its bound; every other entry is in use", excess)
        return chosen

    def _used_since(self, entry: Entry) -> bool:
        try:
            return (entry.path / MARKER).stat().st_mtime > entry.last_used
        except OSError:
            return True  # already gone

    async def make_room(self, keep: set[str], unload: Unload) -> list[str]:
        """Evict least recently used adapters until the cache fits: unload each from vLLM, then delete it."""
        evicted = []
        for entry in self.victims(keep):
            if self._used_since(entry):
                continue
            try:
                await unload(entry.name)
            except Exception:
                log.exception("could not unload %s from vLLM; keeping its files", entry.name)
                continue
            await asyncio.to_thread(self.evict, entry.name)
            evicted.append(entry.name)
        return evicted
