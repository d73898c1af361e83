"""Your weights (a Tailor extension): `GET /v1/models/{model}/weights` answers a fine-tuned
model's or checkpoint's adapter as one .tar.gz of a standard peft directory:
adapter_config.json, adapter_model.safetensors, the tokenizer's files (saved beside the
job's final adapter) and a README naming the base model and the hyperparameters.

The archive is built in a spooled temporary file (memory up to 64 MB, then disk) from the
object store, then streamed: adapters are small beside their base, and the store's files
are read one at a time.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.errors import ModelNotFound
from service.core.naming import TOKENIZER_DIR, TRAINING_STATE_FILES, adapter_prefix, safe_name
from service.core.storage import ObjectStore
from service.core.tables import FineTunedModel, FineTuningJob
from service.jobs.catalog import find_fine_tuned

SPOOL_BYTES = 64 * 1024**2
CHUNK = 1024**2


def readme(row: FineTunedModel, job: FineTuningJob) -> str:
    method = job.method
    lora = (job.extra_hyperparameters or {}).get("lora") or {}
    return "\n".join(
        [
            f"# {row.id}",
            "",
            f"A LoRA adapter of `{row.base_model}`, trained by Tailor job `{job.id}`"
            + (" (a checkpoint)." if row.kind == "checkpoint" else "."),
            "",
            f"- base model: {row.base_model}",
            f"- method: {method['type']}",
            f"- hyperparameters: {json.dumps(method[method['type']]['hyperparameters'])}",
            f"- LoRA: {json.dumps(lora)}",
            f"- seed: {job.seed}",
            "",
            "Load it with peft:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            "base = AutoModelForCausalLM.from_pretrained(BASE_MODEL_DIR)",
            "model = PeftModel.from_pretrained(base, THIS_DIR)",
            "tokenizer = AutoTokenizer.from_pretrained(THIS_DIR)",
            "```",
            "",
        ]
    )


def _build(store: ObjectStore, prefix: str, tokenizer_prefix: str, readme_text: str, out: IO[bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="tailor-scratch-weights-") as tmp, tarfile.open(fileobj=out, mode="w:gz") as tar:
        chosen: dict[str, str] = {}
        for key in store.list_keys(tokenizer_prefix):
            chosen[key[len(tokenizer_prefix) :]] = key
        for key in store.list_keys(prefix):
            name = key[len(prefix) :]
            if "/" not in name and name not in TRAINING_STATE_FILES:
                chosen[name] = key
        for name, key in sorted(chosen.items()):
            local = Path(tmp) / safe_name(name)
            store.download(key, local)
            tar.add(local, arcname=name)
            local.unlink()
        data = readme_text.encode()
        info = tarfile.TarInfo("README.md")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


async def archive(session: AsyncSession, store: ObjectStore, project_id: str, model: str) -> tuple[str, Iterator[bytes]]:
    """(file name, the archive's bytes in chunks) of the caller's own fine-tuned model."""
    row = await find_fine_tuned(session, project_id, model)
    job = (await session.execute(select(FineTuningJob).where(FineTuningJob.id == row.job_id))).scalar_one() if row else None
    if row is None or job is None:
        raise ModelNotFound.named(model)
    prefix = row.storage_key.rstrip("/") + "/"
    tokenizer_prefix = adapter_prefix(job.id, None) + TOKENIZER_DIR + "/"
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115  (closed by `chunks`, or below)
    try:
        await asyncio.to_thread(_build, store, prefix, tokenizer_prefix, readme(row, job), spool)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        with spool:
            while block := spool.read(CHUNK):
                yield block

    return f"{safe_name(model)}.tar.gz", chunks()
