"""Every name Tailor derives from another: fine-tuned model names and object-store keys.

Model names (OpenAI's shape): `ft:{base}:{project}:{suffix}:{job}` for a job's final model,
where `{job}` is the job id without `ftjob-`, and `…:ckpt-step-{N}` for a checkpoint; every
checkpoint is servable. The vLLM plugin reads adapter keys back from these names with a
copy of the rule (inference/vllm_plugin/tailor_vllm_plugin/names.py: it imports nothing of
Tailor); tests/test_inference_plugin.py keeps the two in step.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.core.tables import FineTuningJob

JOB_ID_PREFIX = "ftjob-"


MAX_SUFFIX = 64
_CHECKPOINT_PART = re.compile(r"^ckpt-step-([0-9]+)$")


def fine_tuned_model_name(job: FineTuningJob, project_name: str) -> str:
    suffix = job.suffix or ""
    if job.parent_model:  # a continued job's name says where it came from
        tag = lineage_tag(job.parent_model)
        suffix = f"{suffix[: MAX_SUFFIX - len(tag) - 1]}.{tag}" if suffix else tag
    return f"ft:{job.model}:{project_name}:{suffix}:{job.id.removeprefix(JOB_ID_PREFIX)}"


def lineage_tag(parent: str) -> str:
    """`from-{first 8 characters of the parent's job}` (`-s{N}` for its checkpoint at step N)."""
    parts = parent.split(":")
    step = None
    if (match := _CHECKPOINT_PART.match(parts[-1])) is not None:
        step, parts = match.group(1), parts[:-1]
    return f"from-{parts[-1][:8]}" + (f"-s{step}" if step else "")


def checkpoint_model_name(final_name: str, step: int) -> str:
    return f"{final_name}:ckpt-step-{step}"


def file_key(project_id: str, file_id: str) -> str:
    """A File's bytes."""
    return f"files/{project_id}/{file_id}"


def upload_prefix(upload_id: str) -> str:
    """The folder of an unfinished Upload's parts."""
    return f"uploads/{upload_id}/"


# Beside a final adapter: its tokenizer's files (the weights download ships them; vLLM reads
# only an adapter folder's top level). And what a checkpoint holds that is training state only.
TOKENIZER_DIR = "tokenizer"
TRAINING_STATE_JSON = "training_state.json"
TRAINING_STATE_PT = "training_state.pt"
TRAINING_STATE_FILES = frozenset({TRAINING_STATE_JSON, TRAINING_STATE_PT})


def adapter_prefix(job_id: str, step: int | None) -> str:
    """The folder of a job's final adapter (`step` None) or of its checkpoint at `step`."""
    return f"adapters/{job_id}/" + (f"step-{step}/" if step is not None else "final/")


def safe_name(name: str) -> str:
    """`name` as one file or directory name: every character but [A-Za-z0-9._-] becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
