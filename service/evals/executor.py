"""One eval run, executed by an eval worker: rows read and checked, samples generated
(for `completions`) with bounded concurrency, every criterion graded, one output item
written per row.

Resumable: the items already written are counted and skipped, and writing an item twice
keeps the first (service/evals/runs.py), so a run taken over from a killed worker ends
with each item exactly once. The lease renewal, every second, is also where a cancel or a
deleted run is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.core.errors import ApiError
from service.core.settings import Settings
from service.core.storage import ObjectStore
from service.core.tables import Eval, EvalRun, File
from service.evals import data, runs, spec
from service.evals.graders import Grader, GradingTools, JudgeReply, chat_messages, grade, make_sample
from service.evals.graders.results import add_usage, merge_usage
from service.evals.metrics import EvalMetrics
from service.evals.models import GenerationError, ModelClient

log = logging.getLogger("tailor.evals")

RENEW_SECONDS = 1.0
JUDGE_MAX_TOKENS = 512
# What a jsonl run's samples show for sampling: nothing was sampled.
JSONL_SAMPLING = {"temperature": 0.0, "max_completion_tokens": 0, "top_p": 0.0, "seed": 0}


@dataclass
class EvalContext:
    settings: Settings
    worker_id: str
    sessionmaker: async_sessionmaker[AsyncSession]
    store: ObjectStore
    models: ModelClient
    tools_for: Callable[[str], GradingTools]  # project id → what its graders may call
    metrics: EvalMetrics


async def execute_run(ctx: EvalContext, run_id: str) -> str:
    """Run `run_id` to its end (or until it is canceled or taken away); returns how it ended."""
    lease = ctx.settings.lease_seconds
    async with ctx.sessionmaker() as session:
        if not await runs.claim(session, run_id, ctx.worker_id, lease):
            return "skipped"
        run = (await session.execute(select(EvalRun).where(EvalRun.id == run_id))).scalar_one_or_none()
        ev = (await session.execute(select(Eval).where(Eval.id == run.eval_id))).scalar_one_or_none() if run else None
        if run is None or ev is None:
            return "gone"
        written = await runs.written_items(session, run_id)
        file = await _source_file(session, run)
    criteria = spec.stored_criteria(ev.testing_criteria)
    progress = runs.Progress([cid for cid, _ in criteria])
    for item in written:
        progress.add(item.status, item.results, item.usage)
    done = {item.datasource_item_id for item in written}
    try:
        source = spec.run_source(run.data_source, ev.data_source_config)
        rows = await asyncio.to_thread(_load_rows, ctx, source, file)
        data.check_rows(rows, data.item_validator(spec.item_schema_of(ev.data_source_config), param="item_schema"))
    except (data.BadRow, ApiError) as exc:
        message = str(exc) if isinstance(exc, data.BadRow) else exc.message
        async with ctx.sessionmaker() as session:
            await runs.finish(
                session, run, ctx.worker_id, runs.FAILED, progress, {"code": "invalid_data_source", "message": message}
            )
        return "failed"
    pending = [row for row in rows if row.index not in done]
    log.info("eval run %s: %d items, %d written before, %d to go", run_id, len(rows), len(done), len(pending))
    tools = ctx.tools_for(run.project_id)
    work = asyncio.create_task(_process_all(ctx, run, source, criteria, tools, pending, progress))
    ended = await _watch(ctx, run_id, work, progress)
    if ended != "finished":
        return ended
    async with ctx.sessionmaker() as session:
        return "completed" if await runs.finish(session, run, ctx.worker_id, runs.COMPLETED, progress) else "canceled"


async def _watch(ctx: EvalContext, run_id: str, work: asyncio.Task[None], progress: runs.Progress) -> str:
    """Renew the lease (publishing progress) until the work ends; stop it on cancel or loss."""
    while True:
        finished, _ = await asyncio.wait({work}, timeout=RENEW_SECONDS)
        if finished:
            work.result()
            return "finished"
        async with ctx.sessionmaker() as session:
            status = await runs.renew(session, run_id, ctx.worker_id, ctx.settings.lease_seconds, progress)
        if status != runs.IN_PROGRESS:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            log.info("eval run %s stopped: %s", run_id, status or "lease lost or run deleted")
            return status or "lost"


async def _source_file(session: AsyncSession, run: EvalRun) -> File | None:
    source = run.data_source.get("source") or {}
    if source.get("type") != "file_id":
        return None
    query = select(File).where(File.id == source.get("id"), File.project_id == run.project_id)
    return (await session.execute(query)).scalar_one_or_none()


def _load_rows(ctx: EvalContext, source: spec.RunSource, file: File | None) -> list[data.Row]:
    if source.content is not None:
        return data.rows_from_content(source.content)
    if file is None:
        raise data.BadRow(0, f"the file '{source.file_id}' no longer exists")
    return data.rows_from_file(ctx.store, file.storage_key, ctx.settings.eval_max_items)


async def _process_all(
    ctx: EvalContext,
    run: EvalRun,
    source: spec.RunSource,
    criteria: list[tuple[str, Grader]],
    tools: GradingTools,
    pending: list[data.Row],
    progress: runs.Progress,
) -> None:
    queue: asyncio.Queue[data.Row] = asyncio.Queue()
    for row in pending:
        queue.put_nowait(row)

    async def lane() -> None:
        while not queue.empty():
            row = queue.get_nowait()
            fields = await _process(ctx, run, source, criteria, tools, row)
            async with ctx.sessionmaker() as session:
                if await runs.add_output_item(session, run.id, row.index, fields):
                    progress.add(fields["status"], fields["results"], fields["usage"])
                    ctx.metrics.items.labels(fields["status"]).inc()

    lanes = min(ctx.settings.eval_concurrency, max(1, len(pending)))
    await asyncio.gather(*(lane() for _ in range(lanes)))


async def _process(
    ctx: EvalContext,
    run: EvalRun,
    source: spec.RunSource,
    criteria: list[tuple[str, Grader]],
    tools: GradingTools,
    row: data.Row,
) -> dict[str, Any]:
    usage: dict[str, dict[str, int]] = {}
    if source.kind == "completions":
        sample_shown, grading_sample, error = await _generate(ctx, run.project_id, source, row, usage)
        if error is not None:
            return {"status": runs.ERROR, "datasource_item": row.item, "results": [], "sample": sample_shown, "usage": usage}
    else:
        grading_sample = make_sample(str((row.sample or {}).get("output_text", ""))) | (row.sample or {})
        sample_shown = _jsonl_sample(row.sample)
    results: list[dict[str, Any]] = []
    status = runs.PASS
    for criterion_id, grader in criteria:
        try:
            outcome = await grade(grader, row.item, grading_sample, tools)
        except (ApiError, GenerationError) as exc:
            sample_shown["error"] = {"code": "grader_error", "message": exc.message}
            return {"status": runs.ERROR, "datasource_item": row.item, "results": results, "sample": sample_shown, "usage": usage}
        merge_usage(usage, outcome.token_usage)
        results.append(
            {
                "name": criterion_id,
                "type": grader.type,
                "score": outcome.score,
                "passed": outcome.passed,
                "sample": outcome.judge_sample,
            }
        )
        if not outcome.passed:
            status = runs.FAIL
    return {"status": status, "datasource_item": row.item, "results": results, "sample": sample_shown, "usage": usage}


async def _generate(
    ctx: EvalContext, project_id: str, source: spec.RunSource, row: data.Row, usage: dict[str, dict[str, int]]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str] | None]:
    """(the sample as the output item shows it, the sample graders see, the error if any)."""
    assert source.model is not None
    sampling = {"temperature": 1.0, "top_p": 1.0, "seed": 42, "max_completion_tokens": 2048} | source.sampling
    shown = _blank_sample(source.model, sampling)
    try:
        messages = _input_messages(source, row)
    except KeyError as exc:
        shown["error"] = {"code": "invalid_item", "message": f"Line {row.line}: the item has no field {exc.args[0]}"}
        return shown, {}, shown["error"]
    shown["input"] = messages
    try:
        completion = await ctx.models.chat(project_id, source.model, messages, sampling)
    except GenerationError as exc:
        shown["error"] = {"code": exc.code, "message": exc.message}
        return shown, {}, shown["error"]
    add_usage(usage, source.model, completion.usage)
    shown["output"] = [{"role": "assistant", "content": completion.text}]
    shown["finish_reason"] = completion.finish_reason
    shown["usage"] = {**completion.usage, "cached_tokens": 0}
    grading = make_sample(completion.text) | {
        "model": source.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": completion.text}, "finish_reason": completion.finish_reason}
        ],
    }
    return shown, grading, None


def _input_messages(source: spec.RunSource, row: data.Row) -> list[dict[str, Any]]:
    if source.template is not None:
        return chat_messages(source.template, row.item, None)
    assert source.item_reference is not None
    value = data.lookup(source.item_reference, row.item, None)
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise KeyError(f"{source.item_reference} holding a list of messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _blank_sample(model: str, sampling: dict[str, Any]) -> dict[str, Any]:
    """An output item's `sample` before (or without) a generation: every field the spec requires."""
    return {
        "input": [],
        "output": [],
        "finish_reason": "",
        "model": model,
        "usage": {"total_tokens": 0, "completion_tokens": 0, "prompt_tokens": 0, "cached_tokens": 0},
        "error": None,
        **{k: sampling[k] for k in ("temperature", "max_completion_tokens", "top_p", "seed")},
    }


def _jsonl_sample(sample: dict[str, Any] | None) -> dict[str, Any]:
    """A jsonl row's own sample, in the output item's shape (nothing was generated)."""
    shown = _blank_sample(str((sample or {}).get("model", "")), JSONL_SAMPLING)
    if sample:
        shown["output"] = [{"role": "assistant", "content": str(sample.get("output_text", ""))}]
    return shown


def judge_for(models: ModelClient, project_id: str) -> Callable[[str, list[dict[str, Any]], dict[str, Any]], Any]:
    """The `judge` of score_model and label_model graders: any model this project may use."""

    async def judge(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> JudgeReply:
        # A verdict is short; without a bound a small model may write until its context ends.
        completion = await models.chat(project_id, model, messages, {"max_completion_tokens": JUDGE_MAX_TOKENS} | sampling)
        return JudgeReply(text=completion.text, usage=completion.usage)

    return judge
