"""The job state machine and its event log, shared by the API and the trainer.

Every change of status goes through `transition`, an UPDATE guarded by the statuses it may
leave from, so two writers (a user cancelling, a worker finishing) can never both win; and
every change writes an event in the wording OpenAI uses.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.errors import InvalidRequest
from service.ids import new_id, now
from service.tables import FineTuningEvent, FineTuningJob

VALIDATING = "validating_files"
QUEUED = "queued"
RUNNING = "running"
PAUSED = "paused"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({VALIDATING, QUEUED, RUNNING})

# Which statuses each user action may start from.
CANCELLABLE = frozenset({VALIDATING, QUEUED, RUNNING, PAUSED})
PAUSABLE = ACTIVE
RESUMABLE = frozenset({PAUSED})

Level = Literal["info", "warn", "error"]


def add_event(
    session: AsyncSession,
    job_id: str,
    message: str,
    *,
    level: Level = "info",
    type_: Literal["message", "metrics"] = "message",
    data: dict[str, Any] | None = None,
) -> FineTuningEvent:
    event = FineTuningEvent(
        id=new_id("ftevent-"),
        job_id=job_id,
        created_at=now(),
        level=level,
        message=message,
        type=type_,
        data=data,
    )
    session.add(event)
    return event


async def transition(
    session: AsyncSession,
    job: FineTuningJob,
    to: str,
    *,
    allowed_from: frozenset[str],
    message: str,
    level: Level = "info",
    **fields: Any,
) -> bool:
    """Move `job` to `to` if it is still in one of `allowed_from`; write the event.

    Returns False (and changes nothing) when another writer moved the job first. The
    caller commits.
    """
    values = {"status": to, **fields}
    if to in TERMINAL:
        values.setdefault("finished_at", now())
        values.setdefault("estimated_finish", None)
    result = await session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job.id, FineTuningJob.status.in_(allowed_from))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    for name, value in values.items():
        setattr(job, name, value)
    add_event(session, job.id, message, level=level)
    return True


def refuse(job: FineTuningJob, action: str) -> InvalidRequest:
    if job.status in TERMINAL:
        why = f"the job has already completed (status: {job.status})"
    else:
        why = f"the job is {job.status}"
    return InvalidRequest(f"Cannot {action} fine-tuning job {job.id}: {why}.", param="fine_tuning_job_id")
