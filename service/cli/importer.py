"""`tailor import openai`: bring fine-tuning jobs and their files across from OpenAI (or any
server that speaks its API, another Tailor included), through the `openai` SDK on both
sides.

For each source job: its training and validation files are downloaded and uploaded here
(each file once per run, however many jobs share it), and the same job is created (method,
hyperparameters, suffix, seed, metadata) on the base model `--model-map` names for its
model. The new job's metadata records the source job's id, so a second run skips what the
first imported.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import openai

# The metadata key that marks an imported job with its source job's id.
IMPORTED_FROM = "imported_from"
METADATA_MAX_PAIRS = 16


@dataclass
class Planned:
    source_id: str
    source_model: str
    target_model: str | None
    files: list[str]
    skip: str | None = None  # why it is not imported
    created: str | None = None  # the new job's id, once made
    job: Any = field(default=None, repr=False)


def parse_model_map(pairs: Iterable[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            raise ValueError(f"--model-map takes SOURCE=BASE, got {pair!r}")
        out[source] = target
    return out


def target_for(model: str, model_map: dict[str, str]) -> str | None:
    """The base model for a source model: an exact entry, else the longest entry the name
    starts with (`gpt-4o-mini` maps `gpt-4o-mini-2024-07-18`)."""
    if model in model_map:
        return model_map[model]
    prefixes = [k for k in model_map if model.startswith(k)]
    return model_map[max(prefixes, key=len)] if prefixes else None


def plan(source: Any, destination: Any, model_map: dict[str, str]) -> list[Planned]:
    imported = {(job.metadata or {}).get(IMPORTED_FROM) for job in destination.fine_tuning.jobs.list(limit=100) if job.metadata}
    planned = []
    for job in source.fine_tuning.jobs.list(limit=100):
        files = [f for f in (job.training_file, job.validation_file) if f]
        entry = Planned(job.id, job.model, target_for(job.model, model_map), files, job=job)
        method = job.method.type if job.method else "supervised"
        if job.id in imported:
            entry.skip = "already imported"
        elif entry.target_model is None:
            entry.skip = f"no --model-map entry for {job.model}"
        elif method not in ("supervised", "dpo"):
            entry.skip = f"method {method} is not supported by Tailor"
        elif len(job.metadata or {}) >= METADATA_MAX_PAIRS:
            entry.skip = "its metadata is full (16 pairs): no room to record the import"
        planned.append(entry)
    return list(reversed(planned))  # oldest first, as they were made


def _method(job: Any) -> dict[str, Any]:
    if job.method is None:
        return {"type": "supervised", "supervised": {"hyperparameters": job.hyperparameters.model_dump(exclude_none=True)}}
    kind = job.method.type
    config = getattr(job.method, kind)
    hyperparameters = config.hyperparameters.model_dump(exclude_none=True) if config and config.hyperparameters else {}
    return {"type": kind, kind: {"hyperparameters": hyperparameters}}


def run(
    source: Any, destination: Any, planned: list[Planned], progress: Callable[[Iterable[Planned]], Iterable[Planned]]
) -> None:
    """Import every planned job that is not skipped; `progress` wraps the iteration (a bar)."""
    uploaded: dict[str, str] = {}

    def copy(file_id: str) -> str:
        if file_id not in uploaded:
            meta = source.files.retrieve(file_id)
            data = source.files.content(file_id).read()
            uploaded[file_id] = destination.files.create(file=(meta.filename, io.BytesIO(data)), purpose="fine-tune").id
        return uploaded[file_id]

    for entry in progress([p for p in planned if p.skip is None]):
        job = entry.job
        try:
            training = copy(job.training_file)
            validation = copy(job.validation_file) if job.validation_file else None
        except openai.NotFoundError:
            entry.skip = "its files are gone at the source"
            continue
        created = destination.fine_tuning.jobs.create(
            model=entry.target_model,
            training_file=training,
            validation_file=validation,
            method=_method(job),
            suffix=job.user_provided_suffix or None,
            seed=job.seed,
            metadata={**(job.metadata or {}), IMPORTED_FROM: job.id},
        )
        entry.created = created.id


def summary(planned: list[Planned], dry_run: bool) -> str:
    header = f"{'SOURCE JOB':<32} {'MODEL':<28} {'BASE HERE':<24} RESULT"
    lines = [header]
    for p in planned:
        result = (p.skip and f"skipped: {p.skip}") or (p.created or ("would import" if dry_run else "not imported"))
        lines.append(f"{p.source_id:<32} {p.source_model:<28} {p.target_model or '-':<24} {result}")
    made = sum(1 for p in planned if p.created)
    would = sum(1 for p in planned if p.skip is None)
    lines.append(f"{would} to import (dry run)" if dry_run else f"{made} imported, {len(planned) - made} skipped")
    return "\n".join(lines)
