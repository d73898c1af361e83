"""Eval run rows: statuses, the worker's lease, output items and the running totals.

A run is `queued` until a worker claims it (`in_progress`), then `completed`, `failed` or
`canceled`. Every change is one guarded UPDATE, so a user's cancel and a worker's finish
can never both win, and a worker killed mid-run leaves a lease that expires and lets
another one resume. Output items are keyed by (run, item index): writing one twice keeps
the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.core import outbox
from service.core.db import rows_changed
from service.core.ids import new_id, now
from service.core.tables import Eval, EvalOutputItem, EvalRun
from service.evals.graders.results import merge_usage

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELED = "queued", "in_progress", "completed", "failed", "canceled"
UNFINISHED = (QUEUED, IN_PROGRESS)
FINISHED = (COMPLETED, FAILED, CANCELED)

# An output item passes when every criterion passed, fails when one failed, and is an error
# when its generation (or a grader) could not run at all.
PASS, FAIL, ERROR = "pass", "fail", "error"

# The arq functions an eval worker registers.
RUN_FUNCTION = "run_eval"
GRADER_FUNCTION = "run_grader"


def empty_counts() -> dict[str, int]:
    return {"total": 0, "errored": 0, "failed": 0, "passed": 0}


async def claim(session: AsyncSession, run_id: str, worker_id: str, seconds: int) -> bool:
    """Take the run: queued, ours already, or in progress under a lease that ran out."""
    t = now()
    result = await session.execute(
        update(EvalRun)
        .where(
            EvalRun.id == run_id,
            EvalRun.status.in_(UNFINISHED),
            or_(EvalRun.worker_id.is_(None), EvalRun.worker_id == worker_id, EvalRun.lease_expires_at < t),
        )
        .values(status=IN_PROGRESS, worker_id=worker_id, lease_expires_at=t + seconds)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return rows_changed(result) == 1


async def renew(session: AsyncSession, run_id: str, worker_id: str, seconds: int, progress: Progress) -> str | None:
    """Extend our lease and publish the totals so far; returns the run's status, or None when
    the lease is no longer ours."""
    result = await session.execute(
        update(EvalRun)
        .where(EvalRun.id == run_id, EvalRun.worker_id == worker_id, EvalRun.status == IN_PROGRESS)
        .values(lease_expires_at=now() + seconds, **progress.columns())
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    if rows_changed(result) == 1:
        return IN_PROGRESS
    status = (await session.execute(select(EvalRun.status).where(EvalRun.id == run_id))).scalar()
    return status if status in FINISHED else None


# The webhook event of each way a run ends (OpenAI's names).
WEBHOOK_EVENTS = {COMPLETED: "eval.run.succeeded", FAILED: "eval.run.failed", CANCELED: "eval.run.canceled"}


async def finish(
    session: AsyncSession,
    run: EvalRun,
    worker_id: str,
    status: str,
    progress: Progress,
    error: dict[str, str] | None = None,
) -> bool:
    """End our run (completed or failed); False when it was canceled or taken meanwhile."""
    result = await session.execute(
        update(EvalRun)
        .where(EvalRun.id == run.id, EvalRun.worker_id == worker_id, EvalRun.status == IN_PROGRESS)
        .values(status=status, error=error, worker_id=None, lease_expires_at=None, **progress.columns())
        .execution_options(synchronize_session=False)
    )
    ended = rows_changed(result) == 1
    if ended:
        await outbox.record(session, run.project_id, WEBHOOK_EVENTS[status], run.id)
    await session.commit()
    return ended


async def cancel(session: AsyncSession, run: EvalRun) -> bool:
    """The user's cancel: only an unfinished run moves; its worker notices within a second."""
    result = await session.execute(
        update(EvalRun)
        .where(EvalRun.id == run.id, EvalRun.status.in_(UNFINISHED))
        .values(status=CANCELED, worker_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    ended = rows_changed(result) == 1
    if ended:
        await outbox.record(session, run.project_id, WEBHOOK_EVENTS[CANCELED], run.id)
    await session.commit()
    return ended


async def expired_runs(session: AsyncSession) -> list[str]:
    """Runs in progress whose worker stopped renewing its lease (killed, lost its host)."""
    stale = and_(EvalRun.status == IN_PROGRESS, EvalRun.lease_expires_at < now())
    return list((await session.execute(select(EvalRun.id).where(stale))).scalars())


async def waiting_runs(session: AsyncSession) -> list[str]:
    return list((await session.execute(select(EvalRun.id).where(EvalRun.status == QUEUED))).scalars())


async def add_output_item(session: AsyncSession, run_id: str, index: int, fields: dict[str, Any]) -> bool:
    """Write item `index` of the run once; False (and nothing written) when it exists already."""
    session.add(EvalOutputItem(id=new_id("outputitem_"), run_id=run_id, datasource_item_id=index, created_at=now(), **fields))
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        return False
    return True


async def written_items(session: AsyncSession, run_id: str) -> list[EvalOutputItem]:
    query = select(EvalOutputItem).where(EvalOutputItem.run_id == run_id).order_by(EvalOutputItem.datasource_item_id)
    return list((await session.execute(query)).scalars())


@dataclass
class Progress:
    """A run's totals, from the output items written so far (a resumed run starts from them)."""

    criteria: list[str]
    counts: dict[str, int] = field(default_factory=empty_counts)
    per_criterion: dict[str, dict[str, int]] = field(default_factory=dict)
    usage: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, status: str, results: Iterable[dict[str, Any]], usage: dict[str, dict[str, int]]) -> None:
        self.counts["total"] += 1
        self.counts[{PASS: "passed", FAIL: "failed", ERROR: "errored"}[status]] += 1
        if status != ERROR:
            for result in results:
                tally = self.per_criterion.setdefault(result["name"], {"passed": 0, "failed": 0})
                tally["passed" if result.get("passed") else "failed"] += 1
        merge_usage(self.usage, usage)

    def columns(self) -> dict[str, Any]:
        return {
            "result_counts": dict(self.counts),
            "per_testing_criteria_results": [
                {"testing_criteria": name, **self.per_criterion.get(name, {"passed": 0, "failed": 0})} for name in self.criteria
            ],
            "per_model_usage": [
                {
                    "model_name": model,
                    "invocation_count": tokens.get("invocation_count", 0),
                    "prompt_tokens": tokens.get("prompt_tokens", 0),
                    "completion_tokens": tokens.get("completion_tokens", 0),
                    "total_tokens": tokens.get("total_tokens", 0),
                    "cached_tokens": tokens.get("cached_tokens", 0),
                }
                for model, tokens in self.usage.items()
            ],
        }


def new_eval(
    project_id: str, name: str, config: dict[str, Any], criteria: list[dict[str, Any]], metadata: dict[str, str] | None = None
) -> Eval:
    """An eval row from an already checked config and criteria (service/evals/spec.py)."""
    t = now()
    return Eval(
        id=new_id("eval_", 32),
        project_id=project_id,
        name=name,
        data_source_config=config,
        testing_criteria=criteria,
        metadata_=metadata,
        created_at=t,
        updated_at=t,
    )


def new_run(
    ev: Eval, name: str, model: str, data_source: dict[str, Any], report_base: str, metadata: dict[str, str] | None = None
) -> EvalRun:
    """A queued run row of `ev` on an already checked data source."""
    run_id = new_id("evalrun_", 32)
    return EvalRun(
        id=run_id,
        eval_id=ev.id,
        project_id=ev.project_id,
        name=name or model or run_id,
        model=model,
        status=QUEUED,
        data_source=data_source,
        metadata_=metadata,
        report_url=f"{report_base.rstrip('/')}/v1/evals/{ev.id}/runs/{run_id}",
        result_counts=empty_counts(),
        per_model_usage=[],
        per_testing_criteria_results=[{"testing_criteria": c["id"], "passed": 0, "failed": 0} for c in ev.testing_criteria],
        created_at=now(),
    )
