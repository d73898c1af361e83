"""Where a fine-tuned model's adapter lives in the object store, read from its name.

Tailor names a job's final model `ft:{base}:{project}:{suffix}:{job}` and a checkpoint
`ft:{base}:{project}:{suffix}:{job}:ckpt-step-{N}`, where `{job}` is the job id without
its `ftjob-` prefix. The trainer stores the adapters at `adapters/ftjob-{job}/final/` and
`adapters/ftjob-{job}/step-{N}/` (trainer/recorder.py); a test keeps the two in step.

Reading the key from the name means the resolver needs nothing but the object store: no
database, no call back to the API, and it works on a host that shares no disk with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_JOB = re.compile(r"^[A-Za-z0-9]{1,64}$")
_STEP = re.compile(r"^ckpt-step-([0-9]{1,9})$")
_PROJECT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUFFIX = re.compile(r"^[A-Za-z0-9._-]{0,64}$")


@dataclass(frozen=True)
class AdapterRef:
    name: str
    base: str
    job_id: str  # with its ftjob- prefix
    step: int | None  # None: the job's final adapter

    @property
    def prefix(self) -> str:
        """The adapter's folder in the object store, ending in '/'."""
        return f"adapters/{self.job_id}/" + (f"step-{self.step}/" if self.step is not None else "final/")


def parse(name: str) -> AdapterRef | None:
    """The adapter a fine-tuned model name points at, or None for any other name.

    Every part is checked against what Tailor itself produces, so a crafted name can never
    point outside `adapters/` (no '..', no '/')."""
    if not name.startswith("ft:"):
        return None
    parts = name.split(":")
    step = None
    if parts and (match := _STEP.match(parts[-1])):
        step = int(match.group(1))
        parts = parts[:-1]
    # ft, base (may itself hold ':'), project, suffix (may be empty), job
    if len(parts) < 5:
        return None
    base, project, suffix, job = ":".join(parts[1:-3]), parts[-3], parts[-2], parts[-1]
    if not base or not _PROJECT.match(project) or not _SUFFIX.match(suffix) or not _JOB.match(job):
        return None
    return AdapterRef(name=name, base=base, job_id=f"ftjob-{job}", step=step)
