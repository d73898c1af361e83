"""What a worker builds once at start-up and hands every job it runs (arq's `ctx`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.core.registry import BaseModelSpec
from service.core.settings import Settings
from service.core.storage import ObjectStore
from service.jobs.queue import WorkQueue
from trainer.metrics import WorkerMetrics, worker_metrics


@dataclass
class WorkerContext:
    settings: Settings
    worker_id: str
    sessionmaker: async_sessionmaker[AsyncSession]
    store: ObjectStore
    queue: WorkQueue
    base_models: dict[str, BaseModelSpec]
    metrics: WorkerMetrics = field(default_factory=worker_metrics)
