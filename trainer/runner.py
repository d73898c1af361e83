"""One fine-tuning job on one worker: lease it, run the child process, and hand the child's
messages to the recorder.

Stops within seconds when the user cancels (the child is killed), saves a checkpoint and
stops when the user pauses, and gives the job up (leaving it for the lease reaper) when
the lease is lost.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import shutil
import time
from multiprocessing.connection import Connection
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.logs import call_with_logging
from service.core.tables import File, FineTunedModel, FineTuningCheckpoint, FineTuningJob
from service.jobs import lease
from service.jobs import lifecycle as lc
from service.jobs.messages import ChildMessage, JobSpec, Pause
from service.jobs.queue import Signal
from trainer import recorder
from trainer.context import WorkerContext
from trainer.outcome import Outcome

log = logging.getLogger("tailor.worker")

POLL_SECONDS = 0.25
STATUS_CHECK_SECONDS = 2.0
PAUSE_GRACE_SECONDS = 120.0
# A row that says the user stopped the job, as the signal that would have said so.
SIGNAL_OF_STATUS: dict[str, Signal] = {lc.CANCELLED: "cancel", lc.PAUSED: "pause"}


class LeaseLost(Exception):
    pass


async def run_job(w: WorkerContext, job_id: str) -> Outcome:
    """The arq entry point's body. Never raises for a job that ended (failed jobs are
    recorded on the row, not retried by arq)."""
    async with w.sessionmaker() as session:
        job = (await session.execute(select(FineTuningJob).where(FineTuningJob.id == job_id))).scalar_one_or_none()
        if job is None or job.status not in lc.LEASABLE:
            log.info("job %s: nothing to run (%s)", job_id, job.status if job else "missing")
            return Outcome.SKIPPED
        if not await lease.acquire(session, job_id, w.worker_id, w.settings.lease_seconds):
            log.info("job %s: leased by another worker", job_id)
            return Outcome.SKIPPED
        method = str((job.method or {}).get("type", "unknown"))
    workdir = w.settings.resolved_work_dir / job_id
    started, outcome = time.monotonic(), Outcome.ERROR
    w.metrics.job_started()
    try:
        # A signal left from before a resume is stale: the row says the job should run.
        await w.queue.clear_signal(job_id)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        outcome = await JobRun(w, job_id, workdir).execute()
        return outcome
    finally:
        w.metrics.job_finished(job_id, method, outcome, time.monotonic() - started)
        async with w.sessionmaker() as session:
            await lease.release(session, job_id, w.worker_id)
        shutil.rmtree(workdir, ignore_errors=True)


class JobRun:
    def __init__(self, w: WorkerContext, job_id: str, workdir: Path):
        self.w = w
        self.job_id = job_id
        self.workdir = workdir
        self.process: multiprocessing.process.BaseProcess | None = None

    async def execute(self) -> Outcome:
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            spec = await self._prepare()
            if spec is None:
                return Outcome.FAILED
            return await self._supervise(spec)
        except LeaseLost:
            log.warning("job %s: lease lost; leaving it to the worker that took it over", self.job_id)
            return Outcome.LEASE_LOST
        finally:
            heartbeat.cancel()
            self._kill_child()

    async def _heartbeat(self) -> None:
        interval = max(1.0, self.w.settings.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            async with self.w.sessionmaker() as session:
                if not await lease.renew(session, self.job_id, self.w.worker_id, self.w.settings.lease_seconds):
                    log.warning("job %s: could not renew the lease", self.job_id)
                    self._kill_child()
                    return

    async def _prepare(self) -> JobSpec | None:
        """Fetch the job's files and newest checkpoint; None when a file is gone (job failed)."""
        async with self.w.sessionmaker() as session:
            job = await recorder.load_job(session, self.job_id)
            resuming = job.status != lc.VALIDATING
            if not resuming:
                lc.add_event(session, job.id, f"Validating training file: {job.training_file}")
                if job.validation_file:
                    lc.add_event(session, job.id, f"Validating validation file: {job.validation_file}")
                await session.commit()
            paths: dict[str, str | None] = {"training_file": None, "validation_file": None}
            for param in ("training_file", "validation_file"):
                file_id = getattr(job, param)
                if file_id is None:
                    continue
                row = (
                    await session.execute(select(File).where(File.id == file_id, File.project_id == job.project_id))
                ).scalar_one_or_none()
                if row is None:
                    code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
                    await recorder.fail(session, job, code, f"The file {file_id} was deleted before training.", param)
                    return None
                local = self.workdir / "input" / f"{param}.jsonl"
                await asyncio.to_thread(self.w.store.download, row.storage_key, local)
                paths[param] = str(local)
            checkpoint = (
                await session.execute(
                    select(FineTuningCheckpoint)
                    .where(FineTuningCheckpoint.job_id == job.id)
                    .order_by(FineTuningCheckpoint.step_number.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            resume_dir = None
            if checkpoint is None and job.status == lc.RUNNING:
                lc.add_event(
                    session,
                    job.id,
                    "The previous worker stopped before the job's first checkpoint; training restarts from the beginning.",
                    level="warn",
                )
                await session.commit()
            if checkpoint is not None:
                resume_dir = self.workdir / "resume"
                await asyncio.to_thread(self.w.store.download_prefix, checkpoint.storage_key, resume_dir)
                lc.add_event(session, job.id, f"Resuming from checkpoint at step {checkpoint.step_number}")
                await session.commit()
            init_dir = None
            if job.parent_model and resume_dir is None:
                init_dir = await self._download_parent(session, job)
                if init_dir is None:
                    return None
            method = job.method
            extra = job.extra_hyperparameters or {}
            return JobSpec(
                job_id=job.id,
                method_type=method["type"],
                hyperparameters=dict(method[method["type"]]["hyperparameters"]),
                lora=dict(extra.get("lora") or {}),
                seed=job.seed,
                base_model=self.w.base_models[job.model],
                model_cache_dir=str(self.w.settings.resolved_model_cache_dir),
                training_path=str(paths["training_file"]),
                validation_path=paths["validation_file"],
                output_dir=str(self.workdir / "output"),
                device=self.w.settings.device,
                resume_dir=str(resume_dir) if resume_dir else None,
                options=dict(extra.get("training") or {}),
                processes=self.w.settings.train_processes,
                checkpoint_interval_seconds=self.w.settings.checkpoint_interval_seconds or None,
                init_adapter_dir=str(init_dir) if init_dir else None,
            )

    async def _download_parent(self, session: AsyncSession, job: FineTuningJob) -> Path | None:
        """A continued job's starting adapter; None (the job failed) when it is gone."""
        parent = (await session.execute(select(FineTunedModel).where(FineTunedModel.id == job.parent_model))).scalar_one_or_none()
        if parent is None:
            message = f"The model {job.parent_model} was deleted before training; it cannot be continued."
            await recorder.fail(session, job, "model_not_found", message, "model")
            return None
        directory = self.workdir / "parent"
        await asyncio.to_thread(self.w.store.download_prefix, parent.storage_key, directory)
        lc.add_event(session, job.id, f"Continuing from {job.parent_model}")
        await session.commit()
        return directory

    async def _supervise(self, spec: JobSpec) -> Outcome:
        from trainer.child import child_main

        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds an event loop
        parent_conn, child_conn = ctx.Pipe()
        # The child logs in the worker's format (JSON lines stay JSON).
        level = logging.getLogger().getEffectiveLevel()
        args = (level, self.w.settings.log_format, child_main, spec, child_conn)
        self.process = ctx.Process(target=call_with_logging, args=args, daemon=True)
        self.process.start()
        child_conn.close()
        try:
            return await self._follow(self.process, parent_conn)
        finally:
            parent_conn.close()

    async def _follow(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> Outcome:
        """Record what the child sends until the run is over, reading stop requests on a
        clock: a fast child keeps the pipe full, and a cancel must not wait for its last step."""
        sink = recorder.Recorder(self.w, self.job_id)
        pause_sent_at: float | None = None
        last_status_check = last_signal_check = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if await asyncio.to_thread(conn.poll, POLL_SECONDS):
                try:
                    message: ChildMessage = conn.recv()
                except EOFError:
                    # The child closed its end: it is exiting (or died); wait for its code.
                    await asyncio.to_thread(process.join, 10)
                    return await sink.child_exited(process.exitcode, pausing=pause_sent_at is not None)
                if (outcome := await sink.handle(message)) is not None:
                    return outcome
            elif not process.is_alive() and not conn.poll():
                return await sink.child_exited(process.exitcode, pausing=pause_sent_at is not None)
            if loop.time() - last_signal_check < POLL_SECONDS:
                continue
            last_signal_check = loop.time()
            check_row = loop.time() - last_status_check >= STATUS_CHECK_SECONDS
            if check_row:
                last_status_check = loop.time()
            wanted = await self._stop_requested(check_row)
            if wanted == "cancel":
                self._kill_child()
                return Outcome.CANCELLED
            if wanted == "pause" and pause_sent_at is None:
                conn.send(Pause())
                pause_sent_at = loop.time()
            if pause_sent_at is not None and loop.time() - pause_sent_at > PAUSE_GRACE_SECONDS:
                log.warning("job %s: no checkpoint %.0f s after the pause; stopped without one", self.job_id, PAUSE_GRACE_SECONDS)
                self._kill_child()
                return Outcome.PAUSED

    async def _stop_requested(self, check_row: bool) -> Signal | None:
        """`cancel` or `pause` when the user asked for it. The Redis signal is fast and read
        every poll; the row is the truth (a signal can be lost while Redis restarts) and is
        read every few seconds."""
        if (signal := await self.w.queue.read_signal(self.job_id)) is not None:
            return signal
        if not check_row:
            return None
        async with self.w.sessionmaker() as session:
            status, owner = (
                await session.execute(
                    select(FineTuningJob.status, FineTuningJob.worker_id).where(FineTuningJob.id == self.job_id)
                )
            ).one()
        if owner != self.w.worker_id:
            raise LeaseLost()
        return SIGNAL_OF_STATUS.get(status)

    def _kill_child(self) -> None:
        proc = self.process
        if proc is None or not proc.is_alive():
            return
        proc.terminate()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
