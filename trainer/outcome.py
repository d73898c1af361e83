"""How one run of a job on a worker ended: the word in the worker's log and the label of
its metrics. A paused or requeued job runs again, so a job may have several runs."""

from __future__ import annotations

from enum import StrEnum

from service.jobs import lifecycle as lc


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    LEASE_LOST = "lease_lost"  # another worker holds the job now
    STOPPED = "stopped"  # the job moved on under the run, to a status that is none of the above
    SKIPPED = "skipped"  # nothing to run: the job is gone, finished or leased elsewhere
    ERROR = "error"  # the run raised (the database went away mid-job, a bug); arq logs the trace

    @classmethod
    def of_status(cls, status: str) -> Outcome:
        """The outcome of a run that stopped because the job's row reached `status`."""
        return _BY_STATUS.get(status, cls.STOPPED)


_BY_STATUS = {
    lc.SUCCEEDED: Outcome.SUCCEEDED,
    lc.FAILED: Outcome.FAILED,
    lc.CANCELLED: Outcome.CANCELLED,
    lc.PAUSED: Outcome.PAUSED,
}
