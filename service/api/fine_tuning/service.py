"""Fine-tuning jobs: create, list, events and checkpoints. Cancel, pause and resume are
the job domain's (service/jobs/control.py)."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.api.auth import Principal
from service.api.fine_tuning.schemas import (
    DpoMethod,
    FineTuningJobCreate,
    Hyperparameters,
    LoraConfig,
    SupervisedMethod,
    TrainingOptions,
)
from service.api.lookups import find_file
from service.api.pagination import paginate
from service.core.errors import ApiError, InvalidRequest, ModelNotFound
from service.core.ids import new_id, now
from service.core.registry import BaseModelSpec
from service.core.settings import Settings
from service.core.tables import FineTuningCheckpoint, FineTuningEvent, FineTuningJob
from service.evals import after_training
from service.jobs import catalog
from service.jobs import lifecycle as lc
from service.jobs.queue import WorkQueue

log = logging.getLogger("tailor.fine_tuning")


def resolve_method(body: FineTuningJobCreate) -> dict[str, Any]:
    """The method as the job will show it, with every hyperparameter present."""
    if body.method is not None and body.hyperparameters is not None:
        raise InvalidRequest(
            "Give hyperparameters in 'method' only: the top-level 'hyperparameters' is the deprecated form "
            "and cannot be combined with 'method'.",
            param="hyperparameters",
        )
    if body.method is None:
        hp = body.hyperparameters or Hyperparameters()
        return {"type": "supervised", "supervised": {"hyperparameters": hp.model_dump()}}
    if body.method.type == "reinforcement":
        raise InvalidRequest(
            "method.type 'reinforcement' is not supported by Tailor; use 'supervised' or 'dpo'.", param="method.type"
        )
    if body.method.type == "dpo":
        config: SupervisedMethod | DpoMethod = body.method.dpo or DpoMethod()
    else:
        config = body.method.supervised or SupervisedMethod()
    return {"type": body.method.type, body.method.type: {"hyperparameters": config.hyperparameters.model_dump()}}


async def _check_training_file(session: AsyncSession, project_id: str, file_id: str, param: str) -> None:
    file = await find_file(session, project_id, file_id)
    if file is None:
        raise InvalidRequest(f"Invalid {param}: no such file '{file_id}'. Upload it with purpose 'fine-tune'.", param=param)
    if file.purpose != "fine-tune":
        raise InvalidRequest(
            f"Invalid {param}: file '{file_id}' has purpose '{file.purpose}'; fine-tuning needs purpose 'fine-tune'.",
            param=param,
        )


async def _starting_point(
    session: AsyncSession, project_id: str, model: str, base_models: dict[str, BaseModelSpec]
) -> tuple[str, str | None]:
    """(base model, parent model): a base model starts from itself; a fine-tuned model or
    checkpoint the project may use (its own, or one shared with it) continues its adapter."""
    if model in base_models:
        return model, None
    if model.startswith("ft:") and (row := await catalog.find_usable(session, project_id, model)) is not None:
        if row.base_model in base_models:
            return row.base_model, row.id
    known = ", ".join(sorted(base_models))
    raise ModelNotFound(
        f"The model '{model}' does not exist or you do not have access to it. Base models: {known}; "
        "or one of your fine-tuned models or checkpoints (ft:...) to continue training it.",
        param="model",
    )


async def create_job(
    session: AsyncSession,
    queue: WorkQueue,
    principal: Principal,
    body: FineTuningJobCreate,
    base_models: dict[str, BaseModelSpec],
    settings: Settings,
) -> FineTuningJob:
    base, parent = await _starting_point(session, principal.project_id, body.model, base_models)
    method = resolve_method(body)
    queue_name = queue.queue_for(base_models[base])
    await _check_training_file(session, principal.project_id, body.training_file, "training_file")
    if body.validation_file is not None:
        await _check_training_file(session, principal.project_id, body.validation_file, "validation_file")
    evaluation = None
    if body.evaluation is not None:
        if body.evaluation.test_file is not None:
            await _check_training_file(session, principal.project_id, body.evaluation.test_file, "evaluation.test_file")
        evaluation = after_training.requested(body.evaluation.model_dump(), settings)
    job = FineTuningJob(
        id=new_id("ftjob-"),
        project_id=principal.project_id,
        model=base,
        parent_model=parent,
        status=lc.VALIDATING,
        training_file=body.training_file,
        validation_file=body.validation_file,
        method=method,
        extra_hyperparameters={
            "lora": (body.lora or LoraConfig()).model_dump(),
            "training": (body.training or TrainingOptions()).model_dump(),
        },
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        metadata_=body.metadata,
        integrations=[i.model_dump() for i in body.integrations] if body.integrations else None,
        result_files=[],
        created_at=now(),
        queue=queue_name,
        evaluation=evaluation,
        evaluation_status=evaluation and evaluation["status"],
    )
    session.add(job)
    await session.flush()  # the event row refers to the job row
    lc.add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    await session.commit()
    # The row is the truth; if Redis is away, the reconciler enqueues the job once it is back.
    try:
        await queue.enqueue(job.id, job.queue)
    except ApiError:
        log.warning("job %s created but not enqueued: the queue is unavailable", job.id)
    return job


async def list_jobs(
    session: AsyncSession,
    principal: Principal,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
    metadata_is_null: bool,
) -> tuple[list[FineTuningJob], bool]:
    query = select(FineTuningJob).where(FineTuningJob.project_id == principal.project_id)
    if metadata_is_null:
        query = query.where(FineTuningJob.metadata_.is_(None))
    sqlite = session.get_bind().dialect.name == "sqlite"
    for key, value in (metadata or {}).items():
        query = query.where(_metadata_equals(key, value, sqlite))
    return await paginate(session, query, FineTuningJob, after=after, limit=limit, what="fine-tuning job")


def _metadata_equals(key: str, value: str, sqlite: bool) -> ColumnElement[bool]:
    if sqlite:
        # SQLite's JSON paths cannot name every key ('.', '"', '\\'); json_each compares
        # keys as plain bound values.
        pairs = func.json_each(FineTuningJob.metadata_).table_valued("key", "value")
        return exists(select(1).select_from(pairs).where(pairs.c.key == key, pairs.c.value == value))
    return FineTuningJob.metadata_[key].as_string() == value


async def list_events(
    session: AsyncSession, job: FineTuningJob, *, after: str | None, limit: int
) -> tuple[list[FineTuningEvent], bool]:
    query = select(FineTuningEvent).where(FineTuningEvent.job_id == job.id)
    return await paginate(session, query, FineTuningEvent, after=after, limit=limit, what="event")


async def list_checkpoints(
    session: AsyncSession, job: FineTuningJob, *, after: str | None, limit: int
) -> tuple[list[FineTuningCheckpoint], bool]:
    query = select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job.id)
    return await paginate(session, query, FineTuningCheckpoint, after=after, limit=limit, what="checkpoint")
