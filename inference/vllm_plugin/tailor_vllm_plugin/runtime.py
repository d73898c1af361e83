"""The plugin's state inside one vLLM API process: settings, store, cache, and the app.

Settings come from the environment (`tailor inference` sets them; an operator running vLLM
by hand sets the same variables):

- `TAILOR_STORAGE_URL`, `TAILOR_S3_ENDPOINT_URL`, `TAILOR_S3_REGION`: the object store.
- `TAILOR_ADAPTER_CACHE_DIR` (default `~/.cache/tailor/adapters`) and
  `TAILOR_ADAPTER_CACHE_MAX_BYTES` (default 10 GiB): the local cache.
- `TAILOR_VLLM_BASE_MODEL`: the served base model name; adapters trained on another base
  are not resolved here.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailor_vllm_plugin.cache import AdapterCache
from tailor_vllm_plugin.store import AdapterStore, store_from_env

DEFAULT_CACHE_BYTES = 10 * 1024**3


@dataclass
class Runtime:
    cache: AdapterCache
    base_model: str | None
    _store: AdapterStore | None = None
    # vLLM's FastAPI app, captured by the middleware on its first request; the resolver
    # needs it to unload an adapter from vLLM before evicting its files.
    app: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def store(self) -> AdapterStore:
        # Opened on first use: boto3 is slow to import and vLLM's engine process never needs it.
        with self._lock:
            if self._store is None:
                self._store = store_from_env()
            return self._store


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            root = Path(os.environ.get("TAILOR_ADAPTER_CACHE_DIR") or Path.home() / ".cache" / "tailor" / "adapters")
            max_bytes = int(os.environ.get("TAILOR_ADAPTER_CACHE_MAX_BYTES") or DEFAULT_CACHE_BYTES)
            _runtime = Runtime(cache=AdapterCache(root, max_bytes), base_model=os.environ.get("TAILOR_VLLM_BASE_MODEL") or None)
        return _runtime


def reset_runtime() -> None:
    """Forget the state (tests change the environment between cases)."""
    global _runtime
    with _runtime_lock:
        _runtime = None
