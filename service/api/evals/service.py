"""Evals and their runs: create, update, list, cancel, delete. Runs execute on the eval
queue (`tailor eval-worker`, service/evals/worker.py), never in the request."""

from __future__ import annotations

import logging
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.api.auth import Principal
from service.api.evals.schemas import EvalCreate, EvalUpdate, RunCreate
from service.api.lookups import find_file
from service.api.pagination import paginate
from service.core.errors import ApiError, Conflict, InvalidRequest, ModelNotFound
from service.core.ids import now
from service.core.registry import BaseModelSpec
from service.core.settings import Settings
from service.core.tables import Eval, EvalOutputItem, EvalRun
from service.evals import runs, spec
from service.evals.availability import cosine_available
from service.jobs.catalog import base_of
from service.jobs.queue import WorkQueue

log = logging.getLogger("tailor.evals")

Order = Literal["asc", "desc"]


async def servable(session: AsyncSession, project_id: str, model: str, base_models: dict[str, BaseModelSpec]) -> bool:
    """Whether Tailor serves `model` to this project: a base model, one of its ft: models, or one shared with it."""
    return await base_of(session, project_id, model, base_models) is not None


async def _check_judges(
    session: AsyncSession,
    project_id: str,
    criteria: list[dict[str, Any]],
    base_models: dict[str, BaseModelSpec],
    settings: Settings,
) -> None:
    for i, criterion in enumerate(criteria):
        model = criterion.get("model")
        if model is None or settings.judge_base_url or await servable(session, project_id, model, base_models):
            continue
        raise InvalidRequest(
            f"The judge model '{model}' is not served by Tailor. Use a base model or one of your ft: models, "
            "or have the operator set TAILOR_JUDGE_BASE_URL to an OpenAI-compatible endpoint for judges.",
            param=f"testing_criteria[{i}].model",
        )


async def create_eval(
    session: AsyncSession, principal: Principal, body: EvalCreate, base_models: dict[str, BaseModelSpec], settings: Settings
) -> Eval:
    config = spec.data_source_config(body.data_source_config)
    criteria = spec.testing_criteria(
        body.testing_criteria, config, python_enabled=settings.python_grader, cosine_enabled=cosine_available(settings)
    )
    await _check_judges(session, principal.project_id, criteria, base_models, settings)
    row = runs.new_eval(principal.project_id, body.name or "", config, criteria, body.metadata)
    session.add(row)
    await session.commit()
    return row


async def update_eval(session: AsyncSession, row: Eval, body: EvalUpdate) -> Eval:
    if body.name is not None:
        row.name = body.name
    if "metadata" in body.model_fields_set:
        row.metadata_ = body.metadata
    row.updated_at = now()
    await session.commit()
    return row


async def delete_eval(session: AsyncSession, row: Eval) -> None:
    # Runs and their items go with it (ON DELETE CASCADE); a worker on one of them finds
    # its run gone at its next lease renewal and stops.
    await session.execute(delete(Eval).where(Eval.id == row.id))
    await session.commit()


async def list_evals(
    session: AsyncSession,
    principal: Principal,
    *,
    after: str | None,
    limit: int,
    order: Order,
    order_by: Literal["created_at", "updated_at"],
) -> tuple[list[Eval], bool]:
    query = select(Eval).where(Eval.project_id == principal.project_id)
    keys = [Eval.updated_at] if order_by == "updated_at" else []
    return await paginate(session, query, Eval, after=after, limit=limit, order=order, keys=keys, what="eval")


async def create_run(
    session: AsyncSession,
    queue: WorkQueue,
    principal: Principal,
    ev: Eval,
    body: RunCreate,
    base_models: dict[str, BaseModelSpec],
    settings: Settings,
    report_base: str,
) -> EvalRun:
    source = spec.run_source(body.data_source, ev.data_source_config)
    if source.file_id is not None and await find_file(session, principal.project_id, source.file_id) is None:
        raise InvalidRequest(f"No such file: '{source.file_id}'. Upload it with purpose 'evals'.", param="data_source.source.id")
    if source.content is not None and len(source.content) > settings.eval_max_items:
        raise InvalidRequest(
            f"The run holds more than {settings.eval_max_items} items (TAILOR_EVAL_MAX_ITEMS)", param="data_source.source.content"
        )
    if source.model is not None and not await servable(session, principal.project_id, source.model, base_models):
        raise ModelNotFound(
            f"The model '{source.model}' does not exist or you do not have access to it.", param="data_source.model"
        )
    row = runs.new_run(ev, body.name or "", source.model or "", body.data_source, report_base, body.metadata)
    session.add(row)
    await session.commit()
    # The row is the truth: an eval worker enqueues queued runs it finds, if Redis was away now.
    try:
        await queue.enqueue(row.id, settings.eval_queue_name, runs.RUN_FUNCTION)
    except ApiError:
        log.warning("eval run %s created but not enqueued: the queue is unavailable", row.id)
    return row


async def list_runs(
    session: AsyncSession, ev: Eval, *, after: str | None, limit: int, order: Order, status: str | None
) -> tuple[list[EvalRun], bool]:
    query = select(EvalRun).where(EvalRun.eval_id == ev.id)
    if status is not None:
        query = query.where(EvalRun.status == status)
    return await paginate(session, query, EvalRun, after=after, limit=limit, order=order, what="eval run")


async def cancel_run(session: AsyncSession, run: EvalRun) -> EvalRun:
    if not await runs.cancel(session, run):
        await session.refresh(run)
        raise Conflict(f"The run is already {run.status}; only a queued or running run can be canceled.", param="run_id")
    await session.refresh(run)
    return run


async def delete_run(session: AsyncSession, run: EvalRun) -> None:
    # A running run is canceled by its removal: its worker's next renewal finds no row.
    await session.execute(delete(EvalRun).where(EvalRun.id == run.id))
    await session.commit()


async def list_output_items(
    session: AsyncSession, run: EvalRun, *, after: str | None, limit: int, order: Order, status: str | None
) -> tuple[list[EvalOutputItem], bool]:
    query = select(EvalOutputItem).where(EvalOutputItem.run_id == run.id)
    if status is not None:
        query = query.where(EvalOutputItem.status == status)
    keys = [EvalOutputItem.datasource_item_id]
    return await paginate(session, query, EvalOutputItem, after=after, limit=limit, order=order, keys=keys, what="output item")
