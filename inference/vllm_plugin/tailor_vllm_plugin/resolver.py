"""The vLLM LoRA resolver: an unknown `ft:` model name becomes a loaded adapter.

vLLM calls `resolve_lora` (under its per-name lock) the first time it sees a model name
that is neither the base model nor an adapter it holds. The adapter is looked up in the
object store, downloaded into the local cache (or found there), and handed back as a
LoRARequest; vLLM then loads it.
"""

from __future__ import annotations

import asyncio
import logging

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver

from tailor_vllm_plugin import names
from tailor_vllm_plugin.runtime import Runtime, runtime

log = logging.getLogger("tailor.vllm_plugin")

UNLOAD_TIMEOUT = 30.0


class TailorLoRAResolver(LoRAResolver):
    def __init__(self, state: Runtime | None = None):
        self._state = state
        self._resolving: set[str] = set()

    @property
    def state(self) -> Runtime:
        return self._state or runtime()

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        # base_model_name is vLLM's model path, not its served name; the served name comes
        # from TAILOR_VLLM_BASE_MODEL.
        ref = names.parse(lora_name)
        if ref is None:
            return None
        state = self.state
        if state.base_model and ref.base != state.base_model:
            log.info("not resolving %s: it was trained on %s, this server serves %s", lora_name, ref.base, state.base_model)
            return None
        # Names being resolved are never eviction victims (each holds vLLM's lock on its name).
        self._resolving.add(lora_name)
        try:
            # The store decides: a model deleted since it was cached must not come back.
            if not await asyncio.to_thread(state.store.exists, ref.prefix + "adapter_config.json"):
                await asyncio.to_thread(state.cache.evict, lora_name)
                return None
            path = await asyncio.to_thread(state.cache.fetch, lora_name, lambda d: state.store.download_prefix(ref.prefix, d))
            await state.cache.make_room(keep=self._resolving | {lora_name}, unload=self._unload)
        finally:
            self._resolving.discard(lora_name)
        # vLLM replaces lora_int_id with an id of its own.
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))

    async def _unload(self, lora_name: str) -> None:
        """Make vLLM forget an adapter, in this process, before its files are deleted."""
        app = self.state.app
        if app is None:
            raise RuntimeError(
                "the Tailor middleware has not seen a request yet (start vLLM with "
                "--middleware tailor_vllm_plugin.middleware.TailorAdapterMiddleware)"
            )
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        models = app.state.openai_serving_models
        if lora_name not in models.lora_requests:
            return
        await asyncio.wait_for(models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=lora_name)), UNLOAD_TIMEOUT)
        log.info("unloaded adapter %s from vLLM to make room in the cache", lora_name)
