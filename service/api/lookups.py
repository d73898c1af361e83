"""Loading one object of the caller's project. Another project's object answers exactly like
a missing one, so these are the only queries that look objects up by id for a caller."""

from __future__ import annotations

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.errors import NotFound
from service.core.ids import now
from service.core.tables import Eval, EvalOutputItem, EvalRun, File, FineTuningJob, Upload


def visible_files(project_id: str) -> Select[File]:
    # An expired file is gone as far as the API is concerned.
    return select(File).where(File.project_id == project_id, or_(File.expires_at.is_(None), File.expires_at > now()))


async def find_file(session: AsyncSession, project_id: str, file_id: str) -> File | None:
    return (await session.execute(visible_files(project_id).where(File.id == file_id))).scalar_one_or_none()


async def owned_file(session: AsyncSession, project_id: str, file_id: str) -> File:
    row = await find_file(session, project_id, file_id)
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="id")
    return row


async def owned_upload(session: AsyncSession, project_id: str, upload_id: str) -> Upload:
    row = await session.get(Upload, upload_id)
    if row is None or row.project_id != project_id:
        raise NotFound(f"No such Upload object: {upload_id}", param="upload_id")
    return row


async def owned_job(session: AsyncSession, project_id: str, job_id: str) -> FineTuningJob:
    query = select(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.project_id == project_id)
    job = (await session.execute(query)).scalar_one_or_none()
    if job is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return job


async def owned_eval(session: AsyncSession, project_id: str, eval_id: str) -> Eval:
    row = (await session.execute(select(Eval).where(Eval.id == eval_id, Eval.project_id == project_id))).scalar_one_or_none()
    if row is None:
        raise NotFound(f"No such eval: {eval_id}", param="eval_id")
    return row


async def owned_run(session: AsyncSession, ev: Eval, run_id: str) -> EvalRun:
    row = (await session.execute(select(EvalRun).where(EvalRun.id == run_id, EvalRun.eval_id == ev.id))).scalar_one_or_none()
    if row is None:
        raise NotFound(f"No such eval run: {run_id}", param="run_id")
    return row


async def owned_output_item(session: AsyncSession, run: EvalRun, item_id: str) -> EvalOutputItem:
    query = select(EvalOutputItem).where(EvalOutputItem.id == item_id, EvalOutputItem.run_id == run.id)
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"No such output item: {item_id}", param="output_item_id")
    return row
