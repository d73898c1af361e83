"""A user's cancel, pause or resume: the row moves first (it is the truth), then the
worker hears of it through the queue."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from service.core.errors import ApiError
from service.core.tables import FineTuningJob
from service.jobs import lifecycle as lc
from service.jobs.queue import Signal, WorkQueue

log = logging.getLogger("tailor.jobs")

# What the worker running a job is told; a resume has no worker yet, it goes on the queue.
_SIGNALS: dict[lc.UserAction, Signal] = {lc.CANCEL: "cancel", lc.PAUSE: "pause"}


async def control_job(session: AsyncSession, queue: WorkQueue, job: FineTuningJob, action: lc.UserAction) -> FineTuningJob:
    """Apply `action` to `job` (InvalidRequest when its status forbids it), then tell the
    queue. The status is written either way: a worker that misses a signal sees the row at
    its next check, and a resumed job left off the queue is enqueued by the next requeue."""
    await lc.apply(session, job, action)
    try:
        signal = _SIGNALS.get(action)
        if signal is not None:
            await queue.signal(job.id, signal)
        else:
            await queue.clear_signal(job.id)  # the pause that this resume answers
            await queue.enqueue(job.id, job.queue)
    except ApiError:
        log.warning("job %s: %s recorded, but the queue is unavailable", job.id, action.verb)
    return job
