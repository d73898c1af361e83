"""The chat gateway of a real `tailor serve` in front of stand-in vLLM servers (small ASGI
apps on loopback that answer the way vLLM does and record what reached them): ownership,
byte-exact relaying, streaming chunk by chunk, disconnects, error mapping, balancing.

The real vLLM is in test_inference_vllm.py; these run in seconds.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from conftest import free_port, running_server
from helpers_db import FinishedJob, server_store, succeed_job

from service.cli.devservers import TailorServer

BASE = "SmolLM2-135M-Instruct"
TRAIN_BYTES = (
    json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ahoy"}]}) + "\n"
).encode()


class FakeVllm:
    """Answers /v1/chat/completions and /v1/completions like vLLM. The request body steers it:
    `fake_status` (an error), `fake_sleep` (seconds before answering), `fake_chunks` and
    `fake_delay` (a stream's length and pace), `fake_break` (fail the stream after that many
    chunks: the connection is dropped mid-body)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self.disconnects: list[float] = []
        self.unloaded: list[str] = []
        self.in_flight = 0
        self.peak = 0
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", ws="none", interface="asgi3"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FakeVllm:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the stand-in vLLM did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if scope["path"] == "/v1/unload_lora_adapter":
            name = json.loads(body)["lora_name"]
            self.unloaded.append(name)
            return await _json(send, 200, {"ok": name})
        request = json.loads(body)
        self.requests.append({"path": scope["path"], "body": body, "headers": headers, "json": request})
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await self._answer(request, send, watcher)
        finally:
            self.in_flight -= 1
            watcher.cancel()

    async def _answer(self, request: dict[str, Any], send: Any, watcher: asyncio.Future[None]) -> None:
        if status := request.get("fake_status"):
            error = {
                "error": {"message": f"vLLM says {status}", "type": "BadRequestError", "param": "temperature", "code": status}
            }
            return await _json(send, status, error)
        if sleep := request.get("fake_sleep"):
            done, _ = await asyncio.wait({watcher}, timeout=sleep)
            if done:
                self.disconnects.append(time.monotonic())
                return
        if not request.get("stream"):
            return await _json(
                send,
                200,
                {
                    "object": "chat.completion",
                    "model": request["model"],
                    "served_by": self.port,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
                },
            )
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]}
        )
        for i in range(request.get("fake_chunks", 3)):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": request["model"],
                "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}],
                "sent_at": time.time(),
            }
            await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(), "more_body": True})
            if request.get("fake_break") == i + 1:
                raise RuntimeError("the stand-in vLLM breaks off the stream")
            done, _ = await asyncio.wait({watcher}, timeout=request.get("fake_delay", 0.0))
            if done:
                self.disconnects.append(time.monotonic())
                return
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": request["model"],
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            }
            await send({"type": "http.response.body", "body": f"data: {json.dumps(usage)}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def _wait_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeVllm, FakeVllm]]:
    with FakeVllm() as one, FakeVllm() as two:
        yield one, two


@pytest.fixture(scope="module")
def gateway(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, fakes: tuple[FakeVllm, FakeVllm]
) -> Iterator[TailorServer]:
    root = tmp_path_factory.mktemp("gateway")
    models = root / "models.json"
    # Two more base models (never loaded: only the gateway reads the registry here).
    models.write_text(
        json.dumps(
            [
                {"name": "nobody-serves-me", "source": "hf_dir", "location": str(root)},
                {"name": "half-down", "source": "hf_dir", "location": str(root)},
            ]
        )
    )
    dead = f"http://127.0.0.1:{free_port()}"
    urls = {BASE: [fakes[0].url, fakes[1].url], "nobody-serves-me": [dead], "half-down": [dead, fakes[0].url]}
    env = {
        **server_env,
        "TAILOR_BASE_MODELS_FILE": str(models),
        "TAILOR_INFERENCE_URLS": json.dumps(urls),
        "TAILOR_INFERENCE_TIMEOUT_SECONDS": "1.5",
        "TAILOR_STORAGE_URL": (root / "objects").as_uri(),
    }
    with running_server(env, root / "server") as server:
        yield server


@pytest.fixture(scope="module")
def keys(gateway: TailorServer) -> dict[str, str]:
    return {"alpha": gateway.create_key("alpha"), "beta": gateway.create_key("beta")}


@pytest.fixture(scope="module")
def alpha(gateway: TailorServer, keys: dict[str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=keys["alpha"], max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def beta(gateway: TailorServer, keys: dict[str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=keys["beta"], max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def raw(gateway: TailorServer, keys: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {keys['alpha']}"}, timeout=30) as client:
        yield client


def _finished(alpha: openai.OpenAI, gateway: TailorServer, database_url: str, suffix: str) -> FinishedJob:
    training_file = alpha.files.create(file=("train.jsonl", TRAIN_BYTES), purpose="fine-tune").id
    job = alpha.fine_tuning.jobs.create(model=BASE, training_file=training_file, suffix=suffix)
    return succeed_job(database_url, job.id, "alpha", store=server_store(gateway), steps=[3])


@pytest.fixture(scope="module")
def tuned(alpha: openai.OpenAI, gateway: TailorServer, database_url: str) -> FinishedJob:
    return _finished(alpha, gateway, database_url, "gw")


MESSAGES = [{"role": "user", "content": "hi"}]


def test_base_and_owned_models_are_relayed_byte_for_byte(raw: httpx.Client, tuned: FinishedJob, fakes: Any) -> None:
    for model in (BASE, tuned.fine_tuned_model, tuned.checkpoints[3][1]):
        body = json.dumps({"model": model, "messages": MESSAGES, "top_k": 3, "vendor_field": {"x": [1, 2]}}).encode()
        resp = raw.post(
            "/chat/completions", content=body, headers={"content-type": "application/json", "x-request-id": "req-abc"}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == model and resp.headers["x-request-id"] == "req-abc"
        seen = next(r for f in fakes for r in f.requests if r["body"] == body)
        assert seen["path"] == "/v1/chat/completions" and seen["headers"]["x-request-id"] == "req-abc"


def test_completions_route(alpha: openai.OpenAI, fakes: Any) -> None:
    alpha.completions.create(model=BASE, prompt="Once upon", max_tokens=3)
    assert any(r["path"] == "/v1/completions" and r["json"]["prompt"] == "Once upon" for f in fakes for r in f.requests)


def test_chat_requests_are_timed_under_their_route(raw: httpx.Client, gateway: TailorServer) -> None:
    # The chat paths bypass FastAPI's routing (ChatShortcut); their metrics must not.
    raw.post("/chat/completions", json={"model": BASE, "messages": MESSAGES})
    raw.get("/chat/completions")  # another method: FastAPI's 405
    text = httpx.get(gateway.root_url + "/metrics").text
    assert 'route="/v1/chat/completions",status="200"' in text
    assert 'method="GET",route="/v1/chat/completions",status="405"' in text, text


def test_foreign_and_unknown_models_are_the_same_404(alpha: openai.OpenAI, beta: openai.OpenAI, tuned: FinishedJob) -> None:
    errors = []
    for client, model in (
        (beta, tuned.fine_tuned_model),
        (beta, tuned.checkpoints[3][1]),
        (alpha, tuned.fine_tuned_model + "x"),
        (alpha, "ft:SmolLM2-135M-Instruct:alpha:x:nope"),
    ):
        with pytest.raises(openai.NotFoundError) as exc:
            client.chat.completions.create(model=model, messages=MESSAGES)
        errors.append(exc.value.body)
        assert exc.value.body == {
            "message": f"The model '{model}' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(alpha.base_url), api_key="sk-wrong", max_retries=0).chat.completions.create(
            model=BASE, messages=MESSAGES
        )


def test_streams_are_relayed_chunk_by_chunk(alpha: openai.OpenAI) -> None:
    started = time.monotonic()
    stream = alpha.chat.completions.create(
        model=BASE,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"fake_chunks": 5, "fake_delay": 0.4},
    )
    arrivals = []
    chunks = []
    for chunk in stream:
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    assert [c.choices[0].delta.content for c in chunks[:5]] == ["t0 ", "t1 ", "t2 ", "t3 ", "t4 "]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 6
    # The first chunk arrives while vLLM is still generating the rest (5 × 0.4 s).
    assert arrivals[0] < 1.0 < arrivals[-1], arrivals


def _wait(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_client_that_leaves_a_stream_aborts_it_upstream(alpha: openai.OpenAI, fakes: Any) -> None:
    before = sum(len(f.disconnects) for f in fakes)
    stream = alpha.chat.completions.create(
        model=BASE, messages=MESSAGES, stream=True, extra_body={"fake_chunks": 50, "fake_delay": 0.5}
    )
    next(iter(stream))
    stream.close()
    _wait(lambda: sum(len(f.disconnects) for f in fakes) > before)


def test_a_client_that_leaves_before_the_answer_aborts_it_upstream(
    gateway: TailorServer, keys: dict[str, str], fakes: Any
) -> None:
    before = sum(len(f.disconnects) for f in fakes)
    body = {"model": BASE, "messages": MESSAGES, "fake_sleep": 1.2}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {keys['alpha']}"}, timeout=0.3
        )
    _wait(lambda: sum(len(f.disconnects) for f in fakes) > before)


@pytest.mark.parametrize(
    ("extra", "status", "type_", "code"),
    [
        ({"fake_status": 400}, 400, "invalid_request_error", None),
        ({"fake_status": 500}, 502, "server_error", "upstream_error"),
        ({"fake_sleep": 3}, 504, "server_error", "timeout"),
    ],
)
def test_vllm_errors_become_openai_errors(
    raw: httpx.Client, extra: dict[str, Any], status: int, type_: str, code: str | None
) -> None:
    resp = raw.post("/chat/completions", json={"model": BASE, "messages": MESSAGES, **extra})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == type_ and error["code"] == code
    if status == 400:
        assert error["message"] == "vLLM says 400" and error["param"] == "temperature"


def test_vllm_404_is_model_not_found(raw: httpx.Client, tuned: FinishedJob) -> None:
    resp = raw.post("/chat/completions", json={"model": tuned.fine_tuned_model, "messages": MESSAGES, "fake_status": 404})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


def test_unreachable_servers(raw: httpx.Client) -> None:
    resp = raw.post("/chat/completions", json={"model": "nobody-serves-me", "messages": MESSAGES})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "service_unavailable"
    assert "tailor inference" in resp.json()["error"]["message"]
    for _ in range(4):  # the dead replica is skipped, each time
        assert raw.post("/chat/completions", json={"model": "half-down", "messages": MESSAGES}).status_code == 200


def test_replicas_share_the_load(gateway: TailorServer, keys: dict[str, str], fakes: Any) -> None:
    one, two = fakes
    before = (len(one.requests), len(two.requests))

    async def burst() -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {keys['alpha']}"}, timeout=30) as client:
            body = {"model": BASE, "messages": MESSAGES, "fake_sleep": 0.5}
            responses = await asyncio.gather(*(client.post(gateway.base_url + "/chat/completions", json=body) for _ in range(8)))
            assert all(r.status_code == 200 for r in responses)

    asyncio.run(burst())
    assert (len(one.requests) - before[0], len(two.requests) - before[1]) == (4, 4)


def test_deleting_a_model_unloads_it_everywhere(
    alpha: openai.OpenAI, gateway: TailorServer, database_url: str, fakes: Any
) -> None:
    doomed = _finished(alpha, gateway, database_url, "doomed")
    alpha.chat.completions.create(model=doomed.fine_tuned_model, messages=MESSAGES)
    alpha.models.delete(doomed.fine_tuned_model)
    assert all(doomed.fine_tuned_model in f.unloaded for f in fakes)
    with pytest.raises(openai.NotFoundError) as exc:
        alpha.chat.completions.create(model=doomed.fine_tuned_model, messages=MESSAGES)
    assert exc.value.code == "model_not_found"
    # Its checkpoint is a model of its own and still answers.
    alpha.chat.completions.create(model=doomed.checkpoints[3][1], messages=MESSAGES)


def test_a_stream_vllm_breaks_off_ends_with_an_error_event(alpha: openai.OpenAI) -> None:
    stream = alpha.chat.completions.create(
        model=BASE, messages=MESSAGES, stream=True, extra_body={"fake_chunks": 5, "fake_break": 2}
    )
    contents = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            contents.append(chunk.choices[0].delta.content)
    assert contents == ["t0 ", "t1 "]
    assert "failed" in exc.value.message and "SmolLM2-135M-Instruct" in exc.value.message, exc.value.message


def test_bad_requests_are_refused_before_vllm(raw: httpx.Client, gateway: TailorServer, fakes: Any) -> None:
    before = sum(len(f.requests) for f in fakes)

    def error(body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        resp = raw.post("/chat/completions", content=body, headers={"content-type": "application/json", **(headers or {})})
        return resp.status_code, resp.json()["error"]

    assert error(json.dumps({"messages": MESSAGES}).encode()) == (
        400,
        {"message": "Missing required parameter: 'model'.", "type": "invalid_request_error", "param": "model", "code": None},
    )
    assert error(json.dumps({"model": BASE, "messages": []}).encode())[1]["param"] == "messages"
    assert error(json.dumps({"model": BASE, "messages": MESSAGES, "max_tokens": -1}).encode())[1]["param"] == "max_tokens"
    status, err = error(json.dumps({"model": BASE, "messages": MESSAGES, "stream_options": {"include_usage": "often"}}).encode())
    assert (status, err["param"]) == (400, "stream_options.include_usage"), err
    assert error(b'{"model": "x", "messages": [') == (
        400,
        {
            "message": "We could not parse the JSON body of your request. Send valid JSON.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        },
    )
    assert error(b"[1, 2]")[0] == 400
    # Without a valid key the answer is 401 whatever the body: the key is checked first.
    assert error(b"not json", {"Authorization": "Bearer sk-wrong"})[0] == 401
    resp = httpx.post(gateway.base_url + "/completions", content=b"not json")
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "invalid_request_error"
    assert sum(len(f.requests) for f in fakes) == before  # none of them reached vLLM


def test_a_relay_route_takes_no_other_dependency() -> None:
    # RelayRoute hands its endpoint exactly body, request and principal: a dependency added
    # to an endpoint would silently never run, so declaring one is an error at start-up.
    from fastapi import APIRouter, Request

    from service.api.chat.fast_path import RelayRoute
    from service.api.chat.schemas import CompletionCreate
    from service.api.deps import PrincipalDep, SessionDep

    router = APIRouter(route_class=RelayRoute)

    async def endpoint(body: CompletionCreate, request: Request, principal: PrincipalDep, session: SessionDep) -> None: ...

    with pytest.raises(TypeError, match="exactly body, request and principal"):
        router.post("/x")(endpoint)
