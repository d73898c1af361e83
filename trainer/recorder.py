"""Turns the training child's messages into the job's rows, events and stored objects.

Written to be safe when a job runs twice (arq is at-least-once): checkpoints and models are
keyed by name and step (service/jobs/catalog.py), and every status change is a guarded
transition.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.ids import new_id, now
from service.core.naming import adapter_prefix, file_key
from service.core.tables import File, FineTuningEvent, FineTuningJob
from service.jobs import catalog
from service.jobs import lifecycle as lc
from service.jobs.messages import Checkpoint, ChildMessage, Done, Event, Failed, Metrics, PausedAt, Report, Started, Validated
from trainer.context import WorkerContext
from trainer.outcome import Outcome
from trainer.wandb_sink import WandbSink, unavailable, wandb_config

log = logging.getLogger("tailor.worker")

# Columns of step_metrics.csv, OpenAI's result file for a fine-tuning job.
CSV_COLUMNS = (
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)
REPORT_FILENAME = "data_report.json"
# What a checkpoint's directory holds that the fine-tuned model must not (resume state).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


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


class Recorder:
    def __init__(self, w: WorkerContext, job_id: str):
        self.w = w
        self.job_id = job_id
        self.started_at = time.monotonic()
        self.first_step: int | None = None
        self.last_tokens: tuple[int, float] | None = None  # trained tokens at the latest step report, and when
        self.wandb: WandbSink | None = None

    async def handle(self, message: ChildMessage) -> Outcome | None:
        """Apply one message; return an outcome when the job's run is over."""
        outcome = await self._apply(message)
        if outcome is not None:
            await self._end_wandb(outcome)
        return outcome

    async def _apply(self, message: ChildMessage) -> Outcome | None:
        async with self.w.sessionmaker() as session:
            job = await load_job(session, self.job_id)
            match message:
                case Event():
                    lc.add_event(session, job.id, message.message, level=message.level)
                    await session.commit()
                case Validated():
                    return await self._validated(session, job, message)
                case Report():
                    await self._report(session, job, message.values)
                case Started():
                    return await self._started(session, job)
                case Metrics():
                    await self._metrics(session, job, message)
                case Checkpoint():
                    await self._store_checkpoint(session, job, message)
                case PausedAt():
                    return Outcome.PAUSED
                case Failed():
                    await fail(session, job, message.code, message.message, message.param)
                    return Outcome.FAILED
                case Done():
                    return await self._done(session, job, message)
        return None

    async def _validated(self, session: AsyncSession, job: FineTuningJob, message: Validated) -> Outcome | None:
        method = dict(job.method)
        method[method["type"]] = {"hyperparameters": message.hyperparameters}
        job.method = method
        if job.status == lc.VALIDATING:
            if not await lc.transition(
                session, job, lc.QUEUED, allowed_from={lc.VALIDATING}, message="Files validated, moving job to queued state"
            ):
                await session.rollback()
                log.info("job %s: its status changed during validation", job.id)
                return Outcome.STOPPED
        await session.commit()
        return None

    async def _report(self, session: AsyncSession, job: FineTuningJob, values: dict[str, Any]) -> None:
        """The data report as a result file: created before training, completed at the end
        (the same file: a job has one report)."""
        existing = await self._report_file(session, job)
        if existing is not None:
            current = json.loads(await asyncio.to_thread(self.w.store.get_bytes, existing.storage_key))
            payload = json.dumps({**current, **values}, indent=2).encode()
            await asyncio.to_thread(self.w.store.put_bytes, existing.storage_key, payload)
            existing.bytes = len(payload)
        else:
            row = await self._new_result_file(job, REPORT_FILENAME, json.dumps(values, indent=2).encode())
            session.add(row)
            job.result_files = [*(job.result_files or []), row.id]
        await session.commit()

    async def _report_file(self, session: AsyncSession, job: FineTuningJob) -> File | None:
        if not job.result_files:
            return None
        return (
            await session.execute(select(File).where(File.id.in_(job.result_files), File.filename == REPORT_FILENAME).limit(1))
        ).scalar_one_or_none()

    async def _open_wandb(self, session: AsyncSession, job: FineTuningJob) -> None:
        """Start the job's W&B run when it asked for one; an event says why when it cannot."""
        config = wandb_config(job.integrations)
        if config is None:
            return
        if (why := unavailable()) is not None:
            lc.add_event(session, job.id, f"Skipped the Weights & Biases integration: {why}.", level="warn")
            await session.commit()
            return
        sink = WandbSink(job, config, self.w.settings.resolved_work_dir / "wandb" / job.id)
        try:
            await sink.start()
        except Exception as exc:  # a W&B outage must not fail the training
            lc.add_event(session, job.id, f"Skipped the Weights & Biases integration: {exc}", level="warn")
            await session.commit()
            return
        self.wandb = sink

    async def _end_wandb(self, outcome: Outcome) -> None:
        if self.wandb is not None:
            async with self.w.sessionmaker() as session:
                job = await load_job(session, self.job_id)
            summary = {"status": job.status, "fine_tuned_model": job.fine_tuned_model, "trained_tokens": job.trained_tokens}
            sink, self.wandb = self.wandb, None
            try:
                await sink.finish(summary, failed=outcome == Outcome.FAILED)
            except Exception:
                log.exception("job %s: could not finish its W&B run", self.job_id)

    async def _started(self, session: AsyncSession, job: FineTuningJob) -> Outcome | None:
        await self._open_wandb(session, job)
        if job.status == lc.RUNNING:
            return None  # a resumed run: the job never left `running`
        if not await lc.transition(session, job, lc.RUNNING, allowed_from={lc.QUEUED}, message="Fine-tuning job started"):
            return Outcome.of_status(job.status)
        await session.commit()
        return None

    async def _metrics(self, session: AsyncSession, job: FineTuningJob, message: Metrics) -> None:
        data = message.values
        step, total = message.step, message.total_steps
        parts = [f"training loss={data['train_loss']:.4f}"]
        if "valid_loss" in data:
            parts.append(f"validation loss={data['valid_loss']:.4f}")
        lc.add_event(session, job.id, f"Step {step}/{total}: " + ", ".join(parts), type_="metrics", data=dict(data))
        if self.first_step is None:
            self.first_step, self.started_at = step, time.monotonic()
        elif step > self.first_step:
            per_step = (time.monotonic() - self.started_at) / (step - self.first_step)
            job.estimated_finish = now() + int(per_step * (total - step))
        if "trained_tokens" in data:
            job.trained_tokens = int(data["trained_tokens"])
        await session.commit()
        self._count_tokens(job, step, int(data.get("trained_tokens") or 0))
        if self.wandb is not None:
            try:
                await self.wandb.log(step, data)
            except Exception:
                log.exception("job %s: could not log step %d to W&B", job.id, step)

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

    async def _store_checkpoint(self, session: AsyncSession, job: FineTuningJob, message: Checkpoint) -> None:
        prefix = adapter_prefix(job.id, message.step)
        await asyncio.to_thread(self.w.store.put_dir, prefix, Path(message.dir))
        metrics = message.metrics or {"step": float(message.step)}
        await catalog.record_checkpoint(session, job, message.step, metrics, prefix)
        await session.commit()

    async def _done(self, session: AsyncSession, job: FineTuningJob, message: Done) -> Outcome:
        prefix = adapter_prefix(job.id, None)
        if message.best_step is not None and not message.best_in_dir:
            await asyncio.to_thread(self._copy_best_adapter, job.id, message.best_step, Path(message.dir))
        await asyncio.to_thread(self.w.store.put_dir, prefix, Path(message.dir))
        name = await catalog.record_final_model(session, job, prefix)
        result = await self._write_result_file(session, job)
        lc.add_event(session, job.id, f"New fine-tuned model created: {name}")
        moved = await lc.transition(
            session,
            job,
            lc.SUCCEEDED,
            allowed_from={lc.RUNNING},
            message="The job has successfully completed",
            fine_tuned_model=name,
            result_files=[result.id, *(job.result_files or [])],
            trained_tokens=int(message.trained_tokens or job.trained_tokens or 0),
        )
        if not moved:
            await session.rollback()
            await session.refresh(job)  # the status another writer set
            return Outcome.of_status(job.status)
        await session.commit()
        return Outcome.SUCCEEDED

    def _copy_best_adapter(self, job_id: str, step: int, final_dir: Path) -> None:
        """The kept checkpoint's weights into the final adapter's directory, from the store:
        the child did not have that checkpoint (the job resumed on it after the best epoch)."""
        with tempfile.TemporaryDirectory() as scratch:
            self.w.store.download_prefix(adapter_prefix(job_id, step), Path(scratch))
            for name in ADAPTER_FILES:
                shutil.copyfile(Path(scratch) / name, final_dir / name)

    async def _new_result_file(self, job: FineTuningJob, filename: str, payload: bytes) -> File:
        file_id = new_id("file-")
        key = file_key(job.project_id, file_id)
        await asyncio.to_thread(self.w.store.put_bytes, key, payload)
        return File(
            id=file_id,
            project_id=job.project_id,
            filename=filename,
            purpose="fine-tune-results",
            bytes=len(payload),
            created_at=now(),
            status="processed",
            storage_key=key,
        )

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
                [
                    step,
                    d.get("train_loss"),
                    d.get("train_mean_token_accuracy"),
                    d.get("valid_loss"),
                    d.get("valid_mean_token_accuracy"),
                    d.get("full_valid_loss"),
                    d.get("full_valid_mean_token_accuracy"),
                ]
            )
        row = await self._new_result_file(job, "step_metrics.csv", buf.getvalue().encode())
        session.add(row)
        return row

    async def child_exited(self, exitcode: int | None, *, pausing: bool) -> Outcome:
        outcome = await self._child_exited(exitcode, pausing=pausing)
        await self._end_wandb(outcome)
        return outcome

    async def _child_exited(self, exitcode: int | None, *, pausing: bool) -> Outcome:
        if pausing:
            return Outcome.PAUSED
        async with self.w.sessionmaker() as session:
            job = await load_job(session, self.job_id)
            if job.status in lc.TERMINAL or job.status == lc.PAUSED:
                return Outcome.of_status(job.status)
            if job.worker_id != self.w.worker_id:
                # We lost the lease (and killed the child for it): the job is someone else's now.
                return Outcome.LEASE_LOST
            await fail(
                session,
                job,
                "training_failed",
                f"Training stopped unexpectedly (exit code {exitcode}). The worker's log has the details.",
                None,
            )
        log.warning("job %s: the training process exited with code %s", self.job_id, exitcode)
        return Outcome.FAILED
