"""Tailor's plugin for vLLM: serves fine-tuned adapters straight from Tailor's object store.

Registered under vLLM's `vllm.general_plugins` entry point as `tailor`; vLLM calls
`register()` in each of its processes when `VLLM_PLUGINS` names it. It needs vLLM at run
time, boto3 for an s3:// store, and nothing from Tailor itself.
"""

from __future__ import annotations

__all__ = ["register"]

RESOLVER_NAME = "tailor"


def register() -> None:
    from vllm.lora.resolver import LoRAResolverRegistry

    from tailor_vllm_plugin.resolver import TailorLoRAResolver

    if RESOLVER_NAME not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver(RESOLVER_NAME, TailorLoRAResolver())
