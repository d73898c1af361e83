"""One fine-tuning job on one worker: lease it, run the child process, and turn the child's
messages into rows, events, objects and status changes.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.fine_tuning import lifecycle as lc
from service.logs import call_with_logging
from service.metrics import WorkerMetrics, worker_metrics
from service.model_registry import BaseModelSpec
from service.queue import WorkQueue, signal_key
from service.settings import Settings
from service.storage import ObjectStore
from service.tables import File, FineTuningCheckpoint, FineTuningJob
from trainer import lease, recorder
from trainer.protocol import PAUSE, JobSpec

log = logging.getLogger("tailor.worker")

POLL_SECONDS = 0.25
STATUS_CHECK_SECONDS = 2.0
PAUSE_GRACE_SECONDS = 120.0


@dataclass
class WorkerContext:
    """What a worker builds once at start-up (arq `ctx`)."""

    settings: Settings
    worker_id: str
    sessionmaker: async_sessionmaker[AsyncSession]
    store: ObjectStore
    queue: WorkQueue
    base_models: dict[str, BaseModelSpec]
    metrics: WorkerMetrics = field(default_factory=worker_metrics)


class LeaseLost(Exception):
    pass


async def run_job(w: WorkerContext, job_id: str) -> str:
    """The arq entry point's body. Returns a word for arq's log; never raises for a job
    that ended (failed jobs are recorded on the row, not retried by arq)."""
    async with w.sessionmaker() as session:
        job = (await session.execute(select(FineTuningJob).where(FineTuningJob.id == job_id))).scalar_one_or_none()
        if job is None or job.status not in lease.LEASABLE:
            return f"skipped ({job.status if job else 'missing'})"
        if not await lease.acquire(session, job_id, w.worker_id, w.settings.lease_seconds):
            return "skipped (leased by another worker)"
        method = str((job.method or {}).get("type", "unknown"))
    workdir = w.settings.resolved_work_dir / job_id
    started, outcome = time.monotonic(), "error"
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

    async def execute(self) -> str:
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            spec = await self._prepare()
            if spec is None:
                return "failed (files)"
            return await self._supervise(spec)
        except LeaseLost:
            log.warning("job %s: lease lost; leaving it to the worker that took it over", self.job_id)
            return "lease lost"
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
            if checkpoint is not None:
                resume_dir = self.workdir / "resume"
                await asyncio.to_thread(self.w.store.download_prefix, checkpoint.storage_key, resume_dir)
                lc.add_event(session, job.id, f"Resuming from checkpoint at step {checkpoint.step_number}")
                await session.commit()
            base = self.w.base_models[job.model]
            method = job.method
            return JobSpec(
                job_id=job.id,
                method_type=method["type"],
                hyperparameters=dict(method[method["type"]]["hyperparameters"]),
                lora=dict((job.extra_hyperparameters or {}).get("lora") or {}),
                seed=job.seed,
                base_model=base.__dict__.copy(),
                model_cache_dir=str(self.w.settings.resolved_model_cache_dir),
                training_path=str(paths["training_file"]),
                validation_path=paths["validation_file"],
                output_dir=str(self.workdir / "output"),
                device=self.w.settings.device,
                resume_dir=str(resume_dir) if resume_dir else None,
                resume_step=checkpoint.step_number if checkpoint else 0,
                options=dict((job.extra_hyperparameters or {}).get("training") or {}),
                processes=self.w.settings.train_processes,
            )

    async def _supervise(self, spec: JobSpec) -> str:
        from trainer.child import child_main

        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds an event loop
        parent_conn, child_conn = ctx.Pipe()
        # The child logs in the worker's format (JSON lines stay JSON).
        level = logging.getLogger().getEffectiveLevel()
        args = (level, self.w.settings.log_format, child_main, spec.to_dict(), child_conn)
        self.process = ctx.Process(target=call_with_logging, args=args, daemon=True)
        self.process.start()
        child_conn.close()
        sink = recorder.Recorder(self.w, self.job_id)
        pause_sent_at: float | None = None
        last_status_check = 0.0
        last_signal_check = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                if await asyncio.to_thread(parent_conn.poll, POLL_SECONDS):
                    try:
                        msg: dict[str, Any] = parent_conn.recv()
                    except EOFError:
                        # The child closed its end: it is exiting (or died); wait for its code.
                        await asyncio.to_thread(self.process.join, 10)
                        return await sink.child_exited(self.process.exitcode, pausing=pause_sent_at is not None)
                    outcome = await sink.handle(msg)
                    if outcome is not None:
                        return outcome
                elif not self.process.is_alive() and not parent_conn.poll():
                    return await sink.child_exited(self.process.exitcode, pausing=pause_sent_at is not None)
                # A fast child keeps the pipe full; stop requests are still read on a clock,
                # never only when the pipe is quiet (a cancel would wait for the last step).
                if loop.time() - last_signal_check < POLL_SECONDS:
                    continue
                last_signal_check = loop.time()
                check_row = loop.time() - last_status_check >= STATUS_CHECK_SECONDS
                if check_row:
                    last_status_check = loop.time()
                wanted = await self._stop_requested(check_row)
                if wanted == "cancel":
                    self._kill_child()
                    return "cancelled"
                if wanted == "pause" and pause_sent_at is None:
                    parent_conn.send(PAUSE)
                    pause_sent_at = loop.time()
                if pause_sent_at is not None and loop.time() - pause_sent_at > PAUSE_GRACE_SECONDS:
                    self._kill_child()
                    return "paused (no checkpoint in time)"
        finally:
            parent_conn.close()

    async def _stop_requested(self, check_row: bool) -> str | None:
        """`cancel` or `pause` when the user asked for it. The Redis signal is fast and read
        every poll; the row is the truth (a signal can be lost while Redis restarts) and is
        read every few seconds."""
        redis = await self.w.queue.pool()
        signal = await redis.get(signal_key(self.job_id))
        if signal:
            return signal.decode() if isinstance(signal, bytes) else str(signal)
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
        return {lc.CANCELLED: "cancel", lc.PAUSED: "pause"}.get(status)

    def _kill_child(self) -> None:
        proc = self.process
        if proc is None or not proc.is_alive():
            return
        proc.terminate()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)

