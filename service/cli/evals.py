"""`tailor evals compare` and `tailor evals show`, through the public Evals API with the
`openai` SDK: what they do, a user's own script could do with the same calls."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.evals.compare import (
    ITEM_SCHEMA,
    ModelResult,
    chat_items,
    completions_source,
    default_criteria,
    differing,
    summarize,
    table,
)
from service.evals.data import jsonl_objects

POLL_SECONDS = 1.0
FINISHED = ("completed", "failed", "canceled")


def read_test_file(path: Path) -> list[dict[str, Any]]:
    return chat_items(jsonl_objects(path))


def wait_for_runs(client: Any, eval_id: str, run_ids: Sequence[str], echo: Callable[[str], None], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [client.evals.runs.retrieve(run_id, eval_id=eval_id) for run_id in run_ids]
        if all(r.status in FINISHED for r in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"the runs did not finish within {timeout:g} s: " + ", ".join(f"{r.id} {r.status}" for r in runs))
        echo("  " + "   ".join(f"{r.name}: {r.result_counts.total} items" for r in runs))
        time.sleep(POLL_SECONDS)


def output_items(client: Any, eval_id: str, run_id: str) -> list[dict[str, Any]]:
    return [item.model_dump() for item in client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100)]


def compare(
    client: Any,
    test_file: Path,
    models: Sequence[str],
    criteria: list[dict[str, Any]] | None,
    max_tokens: int,
    echo: Callable[[str], None],
    timeout: float = 3600,
) -> tuple[list[ModelResult], str]:
    """Run every model on the test file; returns the results and the printed report."""
    rows = read_test_file(test_file)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    file = client.files.create(file=(test_file.name, io.BytesIO(data)), purpose="evals")
    criteria = criteria or default_criteria()
    ev = client.evals.create(
        name=f"compare {test_file.name}",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=criteria,
    )
    run_ids = [
        client.evals.runs.create(
            ev.id, name=model, data_source=completions_source(model, {"type": "file_id", "id": file.id}, max_tokens)
        ).id
        for model in models
    ]
    echo(f"eval {ev.id}: {len(rows)} test items, runs {', '.join(run_ids)}")
    runs = wait_for_runs(client, ev.id, run_ids, echo, timeout)
    names = [c["name"] for c in criteria]
    for run in runs:
        if run.status != "completed":
            raise RuntimeError(f"run {run.id} ({run.name}) {run.status}: {run.error.message if run.error else ''}")
    results = [summarize(run.name, output_items(client, ev.id, run.id), names) for run in runs]
    return results, report(results, names, rows)


def report(results: Sequence[ModelResult], names: Sequence[str], rows: Sequence[dict[str, Any]], shown: int = 10) -> str:
    lines = [table(results, names)]
    diff = differing(results)
    lines.append(f"\n{len(diff)} item(s) where the models differ" + (f" (first {shown}):" if len(diff) > shown else ":"))
    for index in diff[:shown]:
        prompt = rows[index]["item"]["messages"][-1]["content"]
        lines.append(f"\n#{index}  {_clip(prompt)}\n    reference: {_clip(rows[index]['item']['reference'])}")
        for r in results:
            passed, answer = r.items.get(index, (False, ""))
            lines.append(f"    {'PASS' if passed else 'fail'} {r.model}: {_clip(answer)}")
    return "\n".join(lines)


def find_run(client: Any, run_id: str) -> tuple[Any, Any]:
    """The eval and run of `run_id`: the API nests runs under their eval, a CLI user has the run id."""
    for ev in client.evals.list(limit=100):
        for run in client.evals.runs.list(ev.id, limit=100):
            if run.id == run_id:
                return ev, run
    raise LookupError(f"No run {run_id} in this project")


def show(client: Any, run_id: str) -> str:
    ev, run = find_run(client, run_id)
    names = [c.name for c in ev.testing_criteria]
    counts = run.result_counts
    lines = [
        f"run {run.id} of eval {ev.id} ({ev.name or 'unnamed'}): {run.status}, model {run.model or '-'}",
        f"items: {counts.total} total, {counts.passed} passed, {counts.failed} failed, {counts.errored} errored",
    ]
    if run.error:
        lines.append(f"error: {run.error.message}")
    lines.append(table([summarize(run.name, output_items(client, ev.id, run.id), names)], names))
    for usage in run.per_model_usage:
        lines.append(f"usage {usage.model_name}: {usage.invocation_count} calls, {usage.total_tokens} tokens")
    return "\n".join(lines)


def _clip(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
