"""The job state machine and its event log, shared by the API and the worker.

Every change of status goes through `transition`, an UPDATE guarded by the statuses it may
leave from, so two writers (a user cancelling, a worker finishing) can never both win; and
every change writes an event in the wording OpenAI uses.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.core import outbox
from service.core.db import rows_changed
from service.core.errors import InvalidRequest
from service.core.ids import new_id, now
from service.core.tables import FineTuningEvent, FineTuningJob

VALIDATING = "validating_files"
QUEUED = "queued"
RUNNING = "running"
PAUSED = "paused"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STATUSES = (VALIDATING, QUEUED, RUNNING, PAUSED, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({VALIDATING, QUEUED, RUNNING})

# Which statuses each user action may start from.
CANCELLABLE = frozenset({VALIDATING, QUEUED, RUNNING, PAUSED})
PAUSABLE = ACTIVE
RESUMABLE = frozenset({PAUSED})

# Statuses in which a worker may hold a job (service/jobs/lease.py).
LEASABLE = ACTIVE

Level = Literal["info", "warn", "error"]
EventType = Literal["message", "metrics"]


def add_event(
    session: AsyncSession,
    job_id: str,
    message: str,
    *,
    level: Level = "info",
    type_: EventType = "message",
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
    allowed_from: AbstractSet[str],
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
    if rows_changed(result) != 1:
        return False
    for name, value in values.items():
        setattr(job, name, value)
    add_event(session, job.id, message, level=level)
    if to in TERMINAL:  # in this transaction: the webhook exists exactly when the status does
        await outbox.record(session, job.project_id, f"fine_tuning.job.{to}", job.id)
    return True


@dataclass(frozen=True)
class UserAction:
    """What a user may ask of a job: the status it moves to, from which, and the event."""

    verb: Literal["cancel", "pause", "resume"]
    to: str
    allowed_from: frozenset[str]
    message: str


CANCEL = UserAction("cancel", CANCELLED, CANCELLABLE, "Fine-tuning job cancelled")
PAUSE = UserAction("pause", PAUSED, PAUSABLE, "Fine-tuning job paused")
RESUME = UserAction("resume", QUEUED, RESUMABLE, "Fine-tuning job resumed")


async def apply(session: AsyncSession, job: FineTuningJob, action: UserAction) -> None:
    """Move `job` as the user asked and commit, or raise InvalidRequest saying why it cannot."""
    if not await transition(session, job, action.to, allowed_from=action.allowed_from, message=action.message):
        await session.refresh(job)
        raise _refusal(job, action.verb)
    await session.commit()


def _refusal(job: FineTuningJob, verb: str) -> InvalidRequest:
    if job.status in TERMINAL:
        why = f"the job has already completed (status: {job.status})"
    else:
        why = f"the job is {job.status}"
    return InvalidRequest(f"Cannot {verb} fine-tuning job {job.id}: {why}.", param="fine_tuning_job_id")
