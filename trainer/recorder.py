"""Turns the training child's messages into the job's rows, events and stored objects.

Written to be safe when a job runs twice (arq is at-least-once): checkpoints and models are
keyed by name and step, and every status change is a guarded transition.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.fine_tuning import lifecycle as lc
from service.ids import new_id, now
from service.models.service import checkpoint_model_name, fine_tuned_model_name, register_model
from service.tables import File, FineTunedModel, FineTuningCheckpoint, FineTuningEvent, FineTuningJob, Project

if TYPE_CHECKING:
    from trainer.job_runner import WorkerContext

log = logging.getLogger("tailor.worker")

# Columns of step_metrics.csv, OpenAI's result file for a fine-tuning job.
CSV_COLUMNS = (
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
)


async def load_job(session: AsyncSession, job_id: str) -> FineTuningJob:
    return (await session.execute(select(FineTuningJob).where(FineTuningJob.id == job_id))).scalar_one()


async def fail(session: AsyncSession, job: FineTuningJob, code: str, message: str, param: str | None) -> bool:
    moved = await lc.transition(
        session,
        job,
        lc.FAILED,
        allowed_from=lc.ACTIVE,
        message=message,
        level="error",
        error={"code": code, "message": message, "param": param},
    )
    await session.commit()
    return moved


def adapter_prefix(job_id: str, step: int | None) -> str:
    return f"adapters/{job_id}/" + (f"step-{step}/" if step is not None else "final/")


async def _final_model_name(session: AsyncSession, job: FineTuningJob) -> str:
    project = (await session.execute(select(Project.name).where(Project.id == job.project_id))).scalar_one()
    return fine_tuned_model_name(job, project)


class Recorder:
    def __init__(self, w: WorkerContext, job_id: str):
        self.w = w
        self.job_id = job_id
        self.started_at = time.monotonic()
        self.first_step: int | None = None
        self.last_tokens: tuple[int, float] | None = None  # trained tokens at the latest step report, and when

    async def handle(self, msg: dict[str, Any]) -> str | None:
        """Apply one message; return an outcome when the job's run is over."""
        handler = getattr(self, f"_on_{msg['kind']}")
        async with self.w.sessionmaker() as session:
            job = await load_job(session, self.job_id)
            return await handler(session, job, msg)

    async def _on_event(self, session: AsyncSession, job: FineTuningJob, msg: dict[str, Any]) -> None:
        lc.add_event(session, job.id, msg["message"], level=msg.get("level", "info"))
        await session.commit()

    async def _on_validated(self, session: AsyncSession, job: FineTuningJob, msg: dict[str, Any]) -> str | None:
        method = dict(job.method)
        method[method["type"]] = {"hyperparameters": msg["hyperparameters"]}
        job.method = method
        if job.status == lc.VALIDATING:
            if not await lc.transition(
                session, job, lc.QUEUED, allowed_from={lc.VALIDATING}, message="Files validated, moving job to queued state"
            ):
                await session.rollback()
                return "stopped (status changed during validation)"
        await session.commit()
        return None

    async def _on_started(self, session: AsyncSession, job: FineTuningJob, msg: dict[str, Any]) -> str | None:
        if job.status == lc.RUNNING:
            return None  # a resumed run: the job never left `running`
        if not await lc.transition(session, job, lc.RUNNING, allowed_from={lc.QUEUED}, message="Fine-tuning job started"):
            return f"stopped (job is {job.status})"
        await session.commit()
        return None

    async def _on_metrics(self, session: AsyncSession, job: FineTuningJob, msg: dict[str, Any]) -> None:
        data = {k: v for k, v in msg.items() if k != "kind" and v is not None}
        step, total = int(data["step"]), int(data["total_steps"])
        parts = [f"training loss={data['train_loss']:.4f}"]
        if "valid_loss" in data:
            parts.append(f"validation loss={data['valid_loss']:.4f}")
        lc.add_event(session, job.id, f"Step {step}/{total}: " + ", ".join(parts), type_="metrics", data=data)
        if self.first_step is None:
            self.first_step, self.started_at = step, time.monotonic()
        elif step > self.first_step:
            per_step = (time.monotonic() - self.started_at) / (step - self.first_step)
            job.estimated_finish = now() + int(per_step * (total - step))
        job.trained_tokens = data.get("trained_tokens", job.trained_tokens)
        await session.commit()
        self._count_tokens(job, step, int(data.get("trained_tokens") or 0))

    def _count_tokens(self, job: FineTuningJob, step: int, tokens: int) -> None:
        """Worker metrics: tokens trained since the previous report, and the rate. A fresh
        run's first step brings all its tokens; a resumed run's first report only sets the
        baseline (what its checkpoint had counted is not reported)."""
        at = time.monotonic()
        if self.last_tokens is None:
            new, seconds = (tokens if step == 1 else 0), None
        else:
            new, seconds = tokens - self.last_tokens[0], at - self.last_tokens[1]
        self.last_tokens = (tokens, at)
        self.w.metrics.step(self.job_id, str(job.method.get("type", "unknown")), max(new, 0), seconds)

    async def _store_adapter(self, session: AsyncSession, job: FineTuningJob, msg: dict[str, Any]) -> None:
        step = int(msg["step"])
        prefix = adapter_prefix(job.id, step)
        await asyncio.to_thread(self.w.store.put_dir, prefix, Path(msg["dir"]))
        name = checkpoint_model_name(await _final_model_name(session, job), step)
        exists = (
            await session.execute(select(FineTuningCheckpoint.id).where(FineTuningCheckpoint.fine_tuned_model_checkpoint == name))
        ).scalar_one_or_none()
        if exists is None:
            session.add(
                FineTuningCheckpoint(
                    id=new_id("ftckpt-"),
                    job_id=job.id,
                    created_at=now(),
                    fine_tuned_model_checkpoint=name,
                    step_number=step,
                    metrics=msg.get("metrics") or {"step": float(step)},
                    storage_key=prefix,
                )
            )
            register_model(session, job, name, "checkpoint", prefix)
            lc.add_event(session, job.id, f"Checkpoint created at step {step}")
        await session.commit()

    async def _on_checkpoint(self, session: AsyncSession, job: FineTuningJob, msg: dict[str, Any]) -> None:
        await self._store_adapter(session, job, msg)

    async def _on_paused(self, session: AsyncSession, job: FineTuningJob, msg: dict[str, Any]) -> str:
        if msg.get("dir"):
            await self._store_adapter(session, job, msg)
        return "paused"

    async def _on_failed(self, session: AsyncSession, job: FineTuningJob, msg: dict[str, Any]) -> str:
        await fail(session, job, msg["code"], msg["message"], msg.get("param"))
        return "failed"

    async def _on_done(self, session: AsyncSession, job: FineTuningJob, msg: dict[str, Any]) -> str:
        prefix = adapter_prefix(job.id, None)
        await asyncio.to_thread(self.w.store.put_dir, prefix, Path(msg["dir"]))
        name = await _final_model_name(session, job)
        if (await session.execute(select(FineTunedModel.id).where(FineTunedModel.id == name))).scalar_one_or_none() is None:
            register_model(session, job, name, "final", prefix)
        result = await self._write_result_file(session, job)
        lc.add_event(session, job.id, f"New fine-tuned model created: {name}")
        moved = await lc.transition(
            session,
            job,
            lc.SUCCEEDED,
            allowed_from={lc.RUNNING},
            message="The job has successfully completed",
            fine_tuned_model=name,
            result_files=[result.id],
            trained_tokens=int(msg.get("trained_tokens") or job.trained_tokens or 0),
        )
        if not moved:
            await session.rollback()
            return f"stopped (job is {job.status})"
        await session.commit()
        return "succeeded"

    async def _write_result_file(self, session: AsyncSession, job: FineTuningJob) -> File:
        events = (
            await session.execute(
                select(FineTuningEvent.data)
                .where(FineTuningEvent.job_id == job.id, FineTuningEvent.type == "metrics")
                .order_by(FineTuningEvent.seq.asc())
            )
        ).scalars()
        by_step: dict[int, dict[str, Any]] = {}
        for data in events:
            if data and "step" in data:
                by_step[int(data["step"])] = data  # a re-run step keeps its latest figures
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_COLUMNS)
        for step in sorted(by_step):
            d = by_step[step]
            writer.writerow(
                [step, d.get("train_loss"), d.get("train_mean_token_accuracy"), d.get("valid_loss"), d.get("valid_mean_token_accuracy")]
            )
        payload = buf.getvalue().encode()
        file_id = new_id("file-")
        key = f"files/{job.project_id}/{file_id}"
        await asyncio.to_thread(self.w.store.put_bytes, key, payload)
        row = File(
            id=file_id,
            project_id=job.project_id,
            filename="step_metrics.csv",
            purpose="fine-tune-results",
            bytes=len(payload),
            created_at=now(),
            status="processed",
            storage_key=key,
        )
        session.add(row)
        return row

    async def child_exited(self, exitcode: int | None, *, pausing: bool) -> str:
        if pausing:
            return "paused"
        async with self.w.sessionmaker() as session:
            job = await load_job(session, self.job_id)
            if job.status in lc.TERMINAL or job.status == lc.PAUSED:
                return f"ended ({job.status})"
            if job.worker_id != self.w.worker_id:
                # We lost the lease (and killed the child for it): the job is someone else's now.
                return "lease lost"
            await fail(
                session,
                job,
                "training_failed",
                f"Training stopped unexpectedly (exit code {exitcode}). The worker's log has the details.",
                None,
            )
        return "failed (child crashed)"
