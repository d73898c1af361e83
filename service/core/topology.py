"""Which vLLM servers serve which base model, as both `tailor inference` and the gateway see it.

An operator lists servers they run in `TAILOR_INFERENCE_URLS` (several replicas per base
model). Any other base model is served by `tailor inference` on `inference_port + i`, i
being the model's place in the registry, so the API and the launcher agree on ports with
no configuration at all on one box.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.core.settings import Settings

# What a client dials for a server bound to every interface.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def launch_port(settings: Settings, registry_order: list[str], base_model: str) -> int:
    return settings.inference_port + registry_order.index(base_model)


def default_url(settings: Settings, registry_order: list[str], base_model: str) -> str:
    host = _WILDCARDS.get(settings.inference_host, settings.inference_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{launch_port(settings, registry_order, base_model)}"


def upstreams(settings: Settings, base_models: Iterable[str]) -> dict[str, list[str]]:
    """Base model name -> root URLs (no trailing '/', no '/v1') of its vLLM replicas."""
    order = list(base_models)
    out: dict[str, list[str]] = {}
    for name in order:
        urls = settings.inference_urls.get(name)
        out[name] = [u.rstrip("/").removesuffix("/v1") for u in urls] if urls else [default_url(settings, order, name)]
    return out
