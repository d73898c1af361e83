"""The Evals API through the official SDK, against `tailor serve` and a real `tailor
eval-worker` on this session's database and Redis: evals, runs on jsonl data (samples in
the rows) and on completions (generation that fails counts as errored items), output items,
graders/validate and graders/run, project isolation and bad input.

Generation by real vLLM, the fine-tuned model against its base, cancel and a worker killed
mid-run are in tests/test_inference_vllm.py, which has vLLM running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from helpers_db import succeed_job
from spec import assert_error_envelope, spec_valid, validate

from service.cli.devservers import TailorEvalWorker, TailorServer, free_port

TRIAGE_SCHEMA = {
    "type": "object",
    "properties": {"ticket": {"type": "string"}, "label": {"type": "string"}},
    "required": ["ticket", "label"],
}
EXACT = {
    "type": "string_check",
    "name": "exact label",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}
FUZZY = {
    "type": "text_similarity",
    "name": "close to the label",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.8,
}
ROWS = [
    {"item": {"ticket": "My card was charged twice", "label": "billing"}, "sample": {"output_text": "billing"}},
    {"item": {"ticket": "The app crashes on start", "label": "bug"}, "sample": {"output_text": "bugs"}},
    {"item": {"ticket": "How do I export my data?", "label": "question"}, "sample": {"output_text": "billing"}},
]


@pytest.fixture(scope="module")
def eval_worker(server: TailorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailorEvalWorker]:
    # No vLLM runs in this module: a job's evaluation is skipped at once instead of waiting for one.
    env = {**server.env, "TAILOR_EVALUATION_WAIT_SECONDS": "0", "TAILOR_WORKER_METRICS_PORT": str(free_port())}
    worker = TailorEvalWorker(env, tmp_path_factory.mktemp("eval-worker"), "evals-a")
    try:
        yield worker
    finally:
        worker.stop()


def _eval(client: openai.OpenAI, **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "name": "triage",
        "data_source_config": {"type": "custom", "item_schema": TRIAGE_SCHEMA, "include_sample_schema": True},
        "testing_criteria": [EXACT, FUZZY],
        "metadata": {"team": "support"},
    }
    return client.evals.create(**(args | overrides))


def _finished(client: openai.OpenAI, eval_id: str, run_id: str, worker: TailorEvalWorker, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still {run.status}\n{worker.log_tail()}")


def _raw(http: httpx.Client, path: str) -> dict[str, Any]:
    response = http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def test_eval_create_retrieve_update_list_delete(client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    created = _eval(client_a)
    assert created.id.startswith("eval_") and created.name == "triage"
    body = _raw(http_a, f"/v1/evals/{created.id}")
    validate(body, "Eval")
    assert body["data_source_config"]["schema"]["properties"]["item"] == TRIAGE_SCHEMA
    assert [c["name"] for c in body["testing_criteria"]] == ["exact label", "close to the label"]
    assert all(c["id"].startswith(c["name"]) for c in body["testing_criteria"])

    updated = client_a.evals.update(created.id, name="triage v2", metadata={"team": "ops"})
    assert (updated.name, updated.metadata) == ("triage v2", {"team": "ops"})
    assert client_a.evals.retrieve(created.id).name == "triage v2"

    second = _eval(client_a, name="second")
    listed = client_a.evals.list(limit=100)
    ids = [e.id for e in listed.data]
    assert ids.index(created.id) < ids.index(second.id)  # ascending by default
    validate(_raw(http_a, "/v1/evals?limit=2&order=desc"), "EvalList")
    newest_first = [e.id for e in client_a.evals.list(order="desc", limit=100).data]
    assert newest_first == ids[::-1]
    time.sleep(1.1)  # updated_at is in seconds, as every OpenAI timestamp
    client_a.evals.update(created.id, name="touched")
    by_update = [e.id for e in client_a.evals.list(order="desc", order_by="updated_at", limit=100).data]
    assert by_update[0] == created.id

    deleted = client_a.evals.delete(second.id)
    assert (deleted.deleted, deleted.eval_id) == (True, second.id)
    with pytest.raises(openai.NotFoundError):
        client_a.evals.retrieve(second.id)


def test_jsonl_run_grades_each_row(client_a: openai.OpenAI, http_a: httpx.Client, eval_worker: TailorEvalWorker) -> None:
    ev = _eval(client_a)
    run = client_a.evals.runs.create(
        ev.id, name="given samples", data_source={"type": "jsonl", "source": {"type": "file_content", "content": ROWS}}
    )
    assert run.status == "queued" and run.eval_id == ev.id
    done = _finished(client_a, ev.id, run.id, eval_worker)
    assert done.status == "completed", done.error
    # Row 1 passes both; row 2 ("bugs" vs "bug") fails exact but is fuzzy-close; row 3 fails both.
    assert done.result_counts.model_dump() == {"total": 3, "passed": 1, "failed": 2, "errored": 0}
    per = {r.testing_criteria.split("-")[0]: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert per == {"exact label": (1, 2), "close to the label": (2, 1)}
    spec_valid(_raw(http_a, f"/v1/evals/{ev.id}/runs/{run.id}"), "EvalRun")

    items = client_a.evals.runs.output_items.list(run.id, eval_id=ev.id)
    assert [i.datasource_item_id for i in items.data] == [0, 1, 2]
    assert [i.status for i in items.data] == ["pass", "fail", "fail"]
    assert items.data[1].datasource_item == ROWS[1]["item"]
    scores = {r.name.split("-")[0]: r.score for r in items.data[1].results}
    assert scores["exact label"] == 0 and 0.8 <= scores["close to the label"] < 1
    raw_list = _raw(http_a, f"/v1/evals/{ev.id}/runs/{run.id}/output_items")
    spec_valid(raw_list, "EvalRunOutputItemList")
    one = client_a.evals.runs.output_items.retrieve(items.data[0].id, eval_id=ev.id, run_id=run.id)
    assert one.status == "pass" and one.sample.output[0].content == "billing"
    failed_only = client_a.evals.runs.output_items.list(run.id, eval_id=ev.id, status="fail")
    assert [i.datasource_item_id for i in failed_only.data] == [1, 2]

    runs = client_a.evals.runs.list(ev.id)
    assert [r.id for r in runs.data] == [run.id]
    assert client_a.evals.runs.list(ev.id, status="queued").data == []
    spec_valid(_raw(http_a, f"/v1/evals/{ev.id}/runs"), "EvalRunList")

    # A finished run cannot be canceled; deleting it removes it and its items.
    with pytest.raises(openai.ConflictError):
        client_a.evals.runs.cancel(run.id, eval_id=ev.id)
    assert client_a.evals.runs.delete(run.id, eval_id=ev.id).deleted
    with pytest.raises(openai.NotFoundError):
        client_a.evals.runs.retrieve(run.id, eval_id=ev.id)


def test_uploaded_file_run_and_a_bad_line_fails_the_run_naming_it(client_a: openai.OpenAI, eval_worker: TailorEvalWorker) -> None:
    ev = _eval(client_a)
    good = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    file_id = client_a.files.create(file=("triage.jsonl", good), purpose="evals").id
    run = client_a.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": file_id}})
    assert _finished(client_a, ev.id, run.id, eval_worker).result_counts.total == 3

    bad_rows = [ROWS[0], {"item": {"ticket": "no label here"}, "sample": {"output_text": "bug"}}]
    bad = "".join(json.dumps(r) + "\n" for r in bad_rows).encode()
    bad_id = client_a.files.create(file=("bad.jsonl", bad), purpose="evals").id
    run = client_a.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": bad_id}})
    failed = _finished(client_a, ev.id, run.id, eval_worker)
    assert failed.status == "failed"
    assert failed.error.message.startswith("Line 2:") and "'label' is a required property" in failed.error.message


def test_failed_generations_count_as_errored_items(client_a: openai.OpenAI, eval_worker: TailorEvalWorker) -> None:
    # No vLLM runs in this module: every generation fails, and the run still completes.
    ev = _eval(client_a)
    run = client_a.evals.runs.create(
        ev.id,
        data_source={
            "type": "completions",
            "model": "SmolLM2-135M-Instruct",
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "Triage: {{item.ticket}}"}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 8},
            "source": {"type": "file_content", "content": [{"item": r["item"]} for r in ROWS]},
        },
    )
    done = _finished(client_a, ev.id, run.id, eval_worker)
    assert done.status == "completed"
    assert done.result_counts.model_dump() == {"total": 3, "passed": 0, "failed": 0, "errored": 3}
    item = client_a.evals.runs.output_items.list(run.id, eval_id=ev.id).data[0]
    assert item.sample.error.code == "inference_unavailable"
    assert item.sample.input[0].content == "Triage: My card was charged twice"


def test_graders_validate_and_run(client_a: openai.OpenAI, eval_worker: TailorEvalWorker) -> None:
    validated = client_a.fine_tuning.alpha.graders.validate(grader=EXACT | {"name": "x"})
    assert validated.grader.type == "string_check"
    result = client_a.fine_tuning.alpha.graders.run(grader=EXACT, item={"label": "billing"}, model_sample="billing")
    assert result.reward == 1.0
    assert result.metadata.type == "string_check" and result.metadata.errors.formula_parse_error is False
    miss = client_a.fine_tuning.alpha.graders.run(grader=EXACT, item={"label": "billing"}, model_sample="bug")
    assert miss.reward == 0.0
    with pytest.raises(openai.BadRequestError) as refused:
        client_a.fine_tuning.alpha.graders.run(
            grader={"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"},
            model_sample="x",
        )
    error = assert_error_envelope(refused.value.response.json(), 400)
    assert "TAILOR_PYTHON_GRADER" in error["message"]


def test_other_projects_objects_answer_404(
    client_a: openai.OpenAI, client_b: openai.OpenAI, eval_worker: TailorEvalWorker
) -> None:
    ev = _eval(client_a)
    run = client_a.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": ROWS}})
    _finished(client_a, ev.id, run.id, eval_worker)
    item = client_a.evals.runs.output_items.list(run.id, eval_id=ev.id).data[0]
    for call in (
        lambda: client_b.evals.retrieve(ev.id),
        lambda: client_b.evals.update(ev.id, name="mine"),
        lambda: client_b.evals.delete(ev.id),
        lambda: client_b.evals.runs.retrieve(run.id, eval_id=ev.id),
        lambda: client_b.evals.runs.list(ev.id),
        lambda: client_b.evals.runs.cancel(run.id, eval_id=ev.id),
        lambda: client_b.evals.runs.delete(run.id, eval_id=ev.id),
        lambda: client_b.evals.runs.output_items.list(run.id, eval_id=ev.id),
        lambda: client_b.evals.runs.output_items.retrieve(item.id, eval_id=ev.id, run_id=run.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert ev.id not in [e.id for e in client_b.evals.list(limit=100).data]
    # Another project's file cannot be a run's data either.
    file_b = client_b.files.create(file=("b.jsonl", json.dumps(ROWS[0]).encode() + b"\n"), purpose="evals").id
    with pytest.raises(openai.BadRequestError) as refused:
        client_a.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": file_b}})
    assert refused.value.body["param"] == "data_source.source.id"  # type: ignore[index]


def _refused(call: Any, param: str, *, words: str = "", status: int = 400) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    error = assert_error_envelope(caught.value.response.json(), status)
    assert error["param"] == param, error
    assert words.lower() in error["message"].lower(), error


def test_bad_input_names_the_field(client_a: openai.OpenAI) -> None:
    custom = {"type": "custom", "item_schema": TRIAGE_SCHEMA, "include_sample_schema": True}
    _refused(
        lambda: client_a.evals.create(data_source_config={"type": "logs"}, testing_criteria=[EXACT]),
        "data_source_config.type",
        words="stores no chat completions",
    )
    _refused(
        lambda: client_a.evals.create(data_source_config={"type": "stored_completions"}, testing_criteria=[EXACT]),
        "data_source_config.type",
    )
    _refused(
        lambda: client_a.evals.create(data_source_config=custom, testing_criteria=[EXACT | {"reference": "{{item.nope}}"}]),
        "testing_criteria[0].reference",
        words="nope",
    )
    _refused(
        lambda: client_a.evals.create(data_source_config=custom, testing_criteria=[{"type": "bogus", "name": "b"}]),
        "testing_criteria[0].type",
    )
    _refused(
        lambda: client_a.evals.create(data_source_config=custom, testing_criteria=[{**FUZZY, "pass_threshold": None}]),
        "testing_criteria[0].pass_threshold",
    )
    no_sample = {"type": "custom", "item_schema": TRIAGE_SCHEMA}
    _refused(
        lambda: client_a.evals.create(data_source_config=no_sample, testing_criteria=[EXACT]),
        "testing_criteria[0].input",
        words="sample",
    )
    ev = _eval(client_a)
    content = {"type": "file_content", "content": ROWS}
    _refused(
        lambda: client_a.evals.runs.create(ev.id, data_source={"type": "responses", "source": content}),
        "data_source.type",
        words="Responses",
    )
    _refused(
        lambda: client_a.evals.runs.create(
            ev.id, data_source={"type": "completions", "source": {"type": "stored_completions"}, "model": "x"}
        ),
        "data_source.source.type",
    )
    template = {"type": "template", "template": [{"role": "user", "content": "{{item.missing}}"}]}
    _refused(
        lambda: client_a.evals.runs.create(
            ev.id,
            data_source={"type": "completions", "model": "SmolLM2-135M-Instruct", "input_messages": template, "source": content},
        ),
        "data_source.input_messages.template[0].content",
        words="missing",
    )
    ok_template = {"type": "template", "template": [{"role": "user", "content": "{{item.ticket}}"}]}
    _refused(
        lambda: client_a.evals.runs.create(
            ev.id, data_source={"type": "completions", "model": "ft:nope", "input_messages": ok_template, "source": content}
        ),
        "data_source.model",
        status=404,
    )
    _refused(
        lambda: client_a.evals.runs.create(
            ev.id,
            data_source={
                "type": "completions",
                "model": "SmolLM2-135M-Instruct",
                "input_messages": ok_template,
                "sampling_params": {"temperature": 9},
                "source": content,
            },
        ),
        "data_source.sampling_params.temperature",
    )
    _refused(
        lambda: client_a.fine_tuning.alpha.graders.validate(
            grader={"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": "nope"}
        ),
        "grader.evaluation_metric",
    )


def test_judge_model_must_be_served(client_a: openai.OpenAI) -> None:
    judge = {
        "type": "label_model",
        "name": "judge",
        "model": "gpt-4o",
        "input": [{"role": "user", "content": "Label: {{item.ticket}}"}],
        "labels": ["billing", "bug"],
        "passing_labels": ["billing"],
    }
    custom = {"type": "custom", "item_schema": TRIAGE_SCHEMA}
    _refused(
        lambda: client_a.evals.create(data_source_config=custom, testing_criteria=[judge]),
        "testing_criteria[0].model",
        words="TAILOR_JUDGE_BASE_URL",
    )
    ev = client_a.evals.create(data_source_config=custom, testing_criteria=[judge | {"model": "SmolLM2-135M-Instruct"}])
    echoed = ev.testing_criteria[0]
    assert echoed.type == "label_model" and echoed.input[0].content.text == "Label: {{item.ticket}}"  # type: ignore[union-attr]


CHAT = b'{"messages": [{"role": "user", "content": "Ticket: card charged twice"}, {"role": "assistant", "content": "billing"}]}\n'


def test_a_jobs_evaluation_is_checked_at_create_and_skipped_without_inference(
    client_a: openai.OpenAI, http_a: httpx.Client, server_env: dict[str, str], eval_worker: TailorEvalWorker
) -> None:
    training = client_a.files.create(file=("train.jsonl", CHAT * 10), purpose="fine-tune").id
    test = client_a.files.create(file=("test.jsonl", CHAT * 3), purpose="fine-tune").id
    base = "SmolLM2-135M-Instruct"
    _refused(
        lambda: client_a.fine_tuning.jobs.create(
            model=base, training_file=training,
            extra_body={"evaluation": {"test_file": test, "testing_criteria": [EXACT | {"reference": "{{item.label}}"}]}},
        ),
        "evaluation.testing_criteria[0].reference",
        words="label",
    )  # fmt: skip
    _refused(
        lambda: client_a.fine_tuning.jobs.create(
            model=base, training_file=training, extra_body={"evaluation": {"test_file": "file-nope"}}
        ),
        "evaluation.test_file",
    )
    job = client_a.fine_tuning.jobs.create(model=base, training_file=training, extra_body={"evaluation": {"test_file": test}})
    body = http_a.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    assert body["evaluation"]["status"] == "pending" and body["evaluation"]["test_file"] == test
    assert [c["name"] for c in body["evaluation"]["testing_criteria"]] == ["exact", "fuzzy"]
    succeed_job(server_env["TAILOR_DATABASE_URL"], job.id, "alpha")
    deadline = time.monotonic() + 30
    while (evaluation := http_a.get(f"/v1/fine_tuning/jobs/{job.id}").json()["evaluation"])["status"] == "pending":
        assert time.monotonic() < deadline, eval_worker.log_tail()
        time.sleep(0.3)
    assert evaluation["status"] == "skipped"
    messages = [e.message for e in client_a.fine_tuning.jobs.list_events(job.id, limit=50).data]
    assert any(m.startswith(f"Skipped the evaluation against {base}: no inference server") for m in messages), messages


def test_eval_worker_serves_metrics_and_health(client_a: openai.OpenAI, eval_worker: TailorEvalWorker) -> None:
    ev = _eval(client_a)
    run = client_a.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": ROWS}})
    _finished(client_a, ev.id, run.id, eval_worker)
    port = eval_worker.env["TAILOR_WORKER_METRICS_PORT"]
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    completed = [line for line in text.splitlines() if line.startswith('tailor_eval_runs_total{outcome="completed"}')]
    assert completed and float(completed[0].split()[-1]) >= 1, text[:2000]
    assert 'tailor_eval_output_items_total{status="pass"}' in text
