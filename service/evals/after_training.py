"""Every fine-tune measured against its base (Tailor's extension, `extra_body.evaluation`).

When a job that asked for it succeeds, an eval worker creates two evals in the job's project
and runs each on the base model and on the tuned one, greedy:

- the test file: the user's held-out chat examples, graded against their reference answers;
- general knowledge: short questions with unambiguous answers shipped with Tailor
  (service/data/general_knowledge.jsonl), to show the tuned model did not forget what its
  base knew. The base's run is made once per project and base model, then reused.

The job's `evaluation` field follows it (`pending` → `running` → `completed`, or `skipped`
with an event saying why when no inference server answers), and its events report the
outcome: "Test file: base 12% → tuned 94% passed".
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.core.db import rows_changed
from service.core.errors import InvalidRequest
from service.core.ids import now
from service.core.settings import Settings
from service.core.storage import ObjectStore
from service.core.tables import Eval, EvalOutputItem, EvalRun, File, FineTuningJob
from service.evals import compare, runs, spec
from service.evals.availability import cosine_available
from service.evals.data import BadRow, downloaded, jsonl_objects
from service.evals.models import ModelClient
from service.jobs import lifecycle as lc
from service.jobs.queue import WorkQueue

log = logging.getLogger("tailor.evals")

PENDING, RUNNING, COMPLETED, SKIPPED, FAILED = "pending", "running", "completed", "skipped", "failed"
GENERAL_KNOWLEDGE_EVAL = "tailor: general knowledge"
GENERAL_KNOWLEDGE_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
# The answer anywhere in the reply, any case (ilike is `contains`, ignoring case): "Paris." and "The capital is Paris" both know it.
KNOWS_THE_ANSWER = {
    "type": "string_check",
    "name": "knows the answer",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "ilike",
}
GENERAL_KNOWLEDGE_TOKENS = 32


def _config(item_schema: dict[str, Any]) -> dict[str, Any]:
    return spec.data_source_config({"type": "custom", "item_schema": item_schema, "include_sample_schema": True})


def requested(options: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The job's `evaluation` as created, its criteria checked now (a 400 at job create)."""
    if options["test_file"] is None and not options["general_knowledge"]:
        raise InvalidRequest("The evaluation asks for nothing: give a test_file, or general_knowledge: true", param="evaluation")
    criteria = spec.testing_criteria(
        options["testing_criteria"] or compare.default_criteria(),
        _config(compare.ITEM_SCHEMA),
        field="evaluation.testing_criteria",
        python_enabled=settings.python_grader,
        cosine_enabled=cosine_available(settings),
    )
    return {
        "status": PENDING,
        "test_file": options["test_file"],
        "testing_criteria": criteria,
        "general_knowledge": options["general_knowledge"],
        "max_tokens": options["max_tokens"],
    }


def general_knowledge_rows() -> list[dict[str, Any]]:
    text = resources.files("service").joinpath("data/general_knowledge.jsonl").read_text()
    return [{"item": json.loads(line)} for line in text.splitlines() if line.strip()]


async def follow(
    sessionmaker: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    models: ModelClient,
    queue: WorkQueue,
    report_base: str,
    wait_seconds: float,
) -> None:
    """One pass: start the evaluations of jobs that just succeeded, conclude finished ones."""
    async with sessionmaker() as session:
        query = select(FineTuningJob).where(
            FineTuningJob.status == lc.SUCCEEDED, FineTuningJob.evaluation_status.in_([PENDING, RUNNING])
        )
        jobs = list((await session.execute(query)).scalars())
    for job in jobs:
        async with sessionmaker() as session:
            if job.evaluation_status == PENDING:
                run_ids = await _start(session, store, models, job, report_base, wait_seconds)
                for run_id in run_ids:
                    await queue.enqueue(run_id, queue.queue_name, runs.RUN_FUNCTION)
            else:
                await _conclude(session, job)


async def _set(session: AsyncSession, job: FineTuningJob, evaluation: dict[str, Any], *, expect: str) -> bool:
    """Move the job's evaluation on, guarded by the status it had (two eval workers, one wins)."""
    result = await session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job.id, FineTuningJob.evaluation_status == expect)
        .values(evaluation=evaluation, evaluation_status=evaluation["status"])
        .execution_options(synchronize_session=False)
    )
    return rows_changed(result) == 1


async def _start(
    session: AsyncSession, store: ObjectStore, models: ModelClient, job: FineTuningJob, report_base: str, wait_seconds: float
) -> list[str]:
    evaluation = dict(job.evaluation or {})
    base, tuned = job.model, job.fine_tuned_model or ""
    if not await models.reachable(base):
        if now() - (job.finished_at or 0) < wait_seconds:
            return []  # vLLM may still be starting (it does on one box, beside the first job)
        evaluation |= {"status": SKIPPED, "message": f"no inference server answers for {base}"}
        if await _set(session, job, evaluation, expect=PENDING):
            lc.add_event(
                session,
                job.id,
                f"Skipped the evaluation against {base}: no inference server answered for it within {wait_seconds:g} s "
                "of the job's end (start `tailor inference`).",
                level="warn",
            )
        await session.commit()
        return []
    created: list[EvalRun] = []
    if evaluation.get("test_file"):
        try:
            rows = await _test_rows(session, store, job.project_id, evaluation["test_file"])
        except BadRow as exc:
            lc.add_event(
                session, job.id, f"Test file {evaluation['test_file']}: {exc}; skipped the test-file evaluation.", level="warn"
            )
        else:
            ev = runs.new_eval(
                job.project_id, f"test file of {job.id}", _config(compare.ITEM_SCHEMA), evaluation["testing_criteria"]
            )
            session.add(ev)
            source = {"type": "file_content", "content": rows}
            pair = {
                who: runs.new_run(
                    ev, who, model, compare.completions_source(model, source, evaluation["max_tokens"]), report_base
                )
                for who, model in (("base", base), ("tuned", tuned))
            }
            created += pair.values()
            evaluation["test"] = {"eval_id": ev.id, "items": len(rows), "runs": {who: r.id for who, r in pair.items()}}
    if evaluation.get("general_knowledge"):
        ev, base_run = await _general_knowledge(session, job.project_id, base, report_base)
        tuned_run = runs.new_run(ev, "tuned", tuned, _general_knowledge_source(tuned), report_base)
        created += [base_run, tuned_run]  # a reused base run is finished or already queued
        evaluation["general_knowledge_check"] = {"eval_id": ev.id, "runs": {"base": base_run.id, "tuned": tuned_run.id}}
    evaluation["status"] = RUNNING
    if not await _set(session, job, evaluation, expect=PENDING):
        await session.rollback()
        return []
    session.add_all(created)
    parts = [f"the test file ({evaluation['test']['items']} items)"] if "test" in evaluation else []
    parts += ["general knowledge (50 questions)"] if "general_knowledge_check" in evaluation else []
    lc.add_event(session, job.id, f"Evaluating {tuned} against {base}: {' and '.join(parts) or 'nothing'}.")
    await session.commit()
    return [r.id for r in created if r.status == runs.QUEUED]


def _general_knowledge_source(model: str) -> dict[str, Any]:
    content = {"type": "file_content", "content": general_knowledge_rows()}
    return compare.completions_source(model, content, GENERAL_KNOWLEDGE_TOKENS, prompt="item.question")


async def _general_knowledge(session: AsyncSession, project_id: str, base: str, report_base: str) -> tuple[Eval, EvalRun]:
    """The project's general-knowledge eval and its base model's run (made once, then reused)."""
    query = select(Eval).where(Eval.project_id == project_id, Eval.name == GENERAL_KNOWLEDGE_EVAL).order_by(Eval.seq)
    ev = (await session.execute(query)).scalars().first()
    if ev is None:
        criteria = spec.testing_criteria([KNOWS_THE_ANSWER], _config(GENERAL_KNOWLEDGE_SCHEMA))
        ev = runs.new_eval(project_id, GENERAL_KNOWLEDGE_EVAL, _config(GENERAL_KNOWLEDGE_SCHEMA), criteria)
        session.add(ev)
    else:
        reusable = select(EvalRun).where(
            EvalRun.eval_id == ev.id, EvalRun.model == base, EvalRun.status.in_([*runs.UNFINISHED, runs.COMPLETED])
        )
        if (earlier := (await session.execute(reusable.order_by(EvalRun.seq))).scalars().first()) is not None:
            return ev, earlier
    return ev, runs.new_run(ev, "base", base, _general_knowledge_source(base), report_base)


async def _test_rows(session: AsyncSession, store: ObjectStore, project_id: str, file_id: str) -> list[dict[str, Any]]:
    file = (await session.execute(select(File).where(File.id == file_id, File.project_id == project_id))).scalar_one_or_none()
    if file is None:
        raise BadRow(0, "the file no longer exists")

    def read() -> list[dict[str, Any]]:
        with downloaded(store, file.storage_key) as path:
            return compare.chat_items(jsonl_objects(path))

    return await asyncio.to_thread(read)


async def _conclude(session: AsyncSession, job: FineTuningJob) -> None:
    evaluation = dict(job.evaluation or {})
    parts = {k: evaluation[k] for k in ("test", "general_knowledge_check") if k in evaluation}
    ids = [run_id for part in parts.values() for run_id in part["runs"].values()]
    found = {r.id: r for r in (await session.execute(select(EvalRun).where(EvalRun.id.in_(ids)))).scalars()}
    if any(i in found and found[i].status in runs.UNFINISHED for i in ids):
        return
    messages: list[tuple[lc.Level, str]] = []
    for key, part in parts.items():
        pair = {who: found.get(run_id) for who, run_id in part["runs"].items()}
        names = await _criterion_names(session, part["eval_id"])
        if any(r is None or r.status != runs.COMPLETED for r in pair.values()):
            states = ", ".join(f"{who} {r.status if r else 'deleted'}" for who, r in pair.items())
            messages.append(
                ("warn", f"{'Test file' if key == 'test' else 'General knowledge'}: the runs did not complete ({states}).")
            )
            continue
        for who, r in pair.items():
            assert r is not None
            part[who] = {
                "model": r.model,
                **{k: r.result_counts[k] for k in ("passed", "failed", "errored", "total")},
                "per_criterion": {
                    compare.criterion_name(c["testing_criteria"], names): c["passed"] for c in r.per_testing_criteria_results
                },
            }
        base, tuned = part["base"], part["tuned"]
        if key == "test":
            messages.append(
                (
                    "info",
                    f"Test file: base {_rate(base)} → tuned {_rate(tuned)} passed ({tuned['total']} items, eval {part['eval_id']}).",
                )
            )
        else:
            lost = await _lost(session, part["runs"]["base"], part["runs"]["tuned"])
            part["lost"] = len(lost)
            level: lc.Level = "warn" if lost else "info"
            detail = f"; lost {len(lost)} the base knew" if lost else ""
            messages.append(
                (
                    level,
                    f"General knowledge kept: {tuned['passed']}/{tuned['total']} (base {base['passed']}/{base['total']}{detail}).",
                )
            )
    evaluation |= parts | {"status": COMPLETED}
    if await _set(session, job, evaluation, expect=RUNNING):
        for level, message in messages:
            lc.add_event(session, job.id, message, level=level)
    await session.commit()


async def _criterion_names(session: AsyncSession, eval_id: str) -> list[str]:
    criteria = (await session.execute(select(Eval.testing_criteria).where(Eval.id == eval_id))).scalar()
    return [c["name"] for c in criteria or []]


async def _lost(session: AsyncSession, base_run: str, tuned_run: str) -> list[int]:
    """Items the base passed and the tuned model failed."""

    async def passed(run_id: str) -> set[int]:
        query = select(EvalOutputItem.datasource_item_id).where(
            EvalOutputItem.run_id == run_id, EvalOutputItem.status == runs.PASS
        )
        return set((await session.execute(query)).scalars())

    return sorted((await passed(base_run)) - (await passed(tuned_run)))


def _rate(counts: dict[str, int]) -> str:
    return f"{100 * counts['passed'] / counts['total']:.0f}%" if counts["total"] else "-"
