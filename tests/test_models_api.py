"""The Models API against a real `tailor serve`: base models from the registry plus each
project's fine-tuned models and checkpoints (written the way the trainer writes them),
retrieve by names that contain ':', and delete (row and adapter bytes)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_server
from helpers_db import FinishedJob, server_store, succeed_job
from spec import assert_error_envelope, validate

from service.core.storage import ObjectStore

BASE = "SmolLM2-135M-Instruct"
TRAIN_BYTES = (
    json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ahoy"}]}) + "\n"
).encode()


def error_of(resp: httpx.Response, status: int, *, param: Any = ..., code: Any = ...) -> dict[str, Any]:
    """Check an error response: status, OpenAI envelope, and (when given) param and code."""
    err = assert_error_envelope(resp, status)
    assert set(err) == {"message", "type", "param", "code"}, err
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    return err


def model_path(name: str) -> str:
    return "/v1/models/" + urllib.parse.quote(name, safe="")


@pytest.fixture(scope="module")
def store(server: Any) -> ObjectStore:
    return server_store(server)


@pytest.fixture(scope="module")
def train_file(client_a: openai.OpenAI) -> str:
    return client_a.files.create(file=("train.jsonl", TRAIN_BYTES), purpose="fine-tune").id


def finished_job(
    client: openai.OpenAI, train_file: str, database_url: str, store: ObjectStore, steps: tuple[int, ...] = (5, 10), **kw: Any
) -> FinishedJob:
    job = client.fine_tuning.jobs.create(model=BASE, training_file=train_file, **kw)
    return succeed_job(database_url, job.id, "alpha", store=store, steps=list(steps))


@pytest.fixture(scope="module")
def finished(client_a: openai.OpenAI, train_file: str, database_url: str, store: ObjectStore) -> FinishedJob:
    return finished_job(client_a, train_file, database_url, store, suffix="custom")


@dataclass
class Stack:
    """A server and alpha's clients on it, with the object store that server writes to."""

    client: openai.OpenAI
    http: httpx.Client
    store: ObjectStore


@pytest.fixture(scope="module", params=["local", "s3"])
def stack(
    request: pytest.FixtureRequest,
    client_a: openai.OpenAI,
    http_a: httpx.Client,
    store: ObjectStore,
    server_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Deleting a model drops its adapter's bytes; check it on both store backends."""
    if request.param == "local":
        yield Stack(client_a, http_a, store)
        return
    endpoint, bucket = request.getfixturevalue("s3_endpoint")
    env = {**server_env, "TAILOR_STORAGE_URL": f"s3://{bucket}/models-test", "TAILOR_S3_ENDPOINT_URL": endpoint}
    data_dir: Path = tmp_path_factory.mktemp("s3-server")
    with running_server(env, data_dir) as s3_server:
        key = s3_server.create_key("alpha")
        with (
            openai.OpenAI(base_url=s3_server.base_url, api_key=key, max_retries=0) as client,
            httpx.Client(base_url=s3_server.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http,
        ):
            yield Stack(client, http, server_store(s3_server))


def test_model_names(finished: FinishedJob) -> None:
    short = finished.job_id.removeprefix("ftjob-")
    assert finished.fine_tuned_model == f"ft:{BASE}:alpha:custom:{short}"
    assert finished.checkpoints[5][1] == f"ft:{BASE}:alpha:custom:{short}:ckpt-step-5"


def test_list_includes_base_and_fine_tuned(client_a: openai.OpenAI, http_a: httpx.Client, finished: FinishedJob) -> None:
    resp = http_a.get("/v1/models")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    validate(body, "ListModelsResponse")
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert len(by_id) == len(body["data"]), "model ids must be unique"
    for model in body["data"]:
        validate(model, "Model")
        assert model["object"] == "model"
    assert BASE in by_id
    expected = [finished.fine_tuned_model, finished.checkpoints[5][1], finished.checkpoints[10][1]]
    for name in expected:
        assert name in by_id, f"{name} missing from /v1/models"
        assert isinstance(by_id[name]["created"], int) and by_id[name]["created"] > 0
        assert by_id[name]["owned_by"]
    # the SDK reads the same list
    assert set(expected) | {BASE} <= {m.id for m in client_a.models.list()}


def test_retrieve_base(client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    raw = client_a.models.with_raw_response.retrieve(BASE)
    body = raw.http_response.json()
    validate(body, "Model")
    assert body["id"] == BASE and body["object"] == "model"
    model = raw.parse()
    assert model.id == BASE and model.owned_by == body["owned_by"]
    assert http_a.get(f"/v1/models/{BASE}").json() == body


def test_retrieve_fine_tuned(client_a: openai.OpenAI, http_a: httpx.Client, finished: FinishedJob) -> None:
    for name in (finished.fine_tuned_model, finished.checkpoints[10][1]):
        model = client_a.models.retrieve(name)  # the SDK's own path encoding of ':'
        assert model.id == name
        assert model.object == "model"
        plain = http_a.get(f"/v1/models/{name}")
        assert plain.status_code == 200, plain.text
        validate(plain.json(), "Model")
        assert plain.json()["id"] == name
        encoded = http_a.get(model_path(name))
        assert encoded.status_code == 200, encoded.text
        assert encoded.json() == plain.json()
        assert model.created == plain.json()["created"]


def test_retrieve_unknown(client_a: openai.OpenAI, http_a: httpx.Client, finished: FinishedJob) -> None:
    for name in ("no-such-model", f"{finished.fine_tuned_model}:ckpt-step-999", "ft:SmolLM2-135M-Instruct:alpha:x:y"):
        err = error_of(http_a.get(model_path(name)), 404, code="model_not_found")
        assert name in err["message"]
        with pytest.raises(openai.NotFoundError) as info:
            client_a.models.retrieve(name)
        assert info.value.code == "model_not_found"


def test_delete_fine_tuned(stack: Stack, train_file: str, database_url: str) -> None:
    client_a, http_a, store = stack.client, stack.http, stack.store
    done = finished_job(client_a, train_file, database_url, store, suffix="doomed")
    name = done.fine_tuned_model
    adapter = f"{done.final_key}/adapter_model.safetensors"
    ckpt_adapter = f"{done.checkpoints[10][2]}/adapter_model.safetensors"
    assert store.exists(adapter) and store.exists(f"{done.final_key}/adapter_config.json")

    raw = client_a.models.with_raw_response.delete(name)
    body = raw.http_response.json()
    validate(body, "DeleteModelResponse")
    assert body == {"id": name, "object": "model", "deleted": True}
    assert raw.parse().deleted is True

    error_of(http_a.get(model_path(name)), 404, code="model_not_found")
    with pytest.raises(openai.NotFoundError):
        client_a.models.retrieve(name)
    listed = {m.id for m in client_a.models.list()}
    assert name not in listed
    assert not store.exists(adapter), "the adapter's bytes must leave the store"
    assert not store.exists(f"{done.final_key}/adapter_config.json")
    # the job's checkpoints are models of their own and stay
    assert done.checkpoints[10][1] in listed
    assert store.exists(ckpt_adapter)
    # deleting again: it is gone
    error_of(http_a.delete(model_path(name)), 404, code="model_not_found")


def test_delete_checkpoint_model(stack: Stack, train_file: str, database_url: str) -> None:
    client_a, store = stack.client, stack.store
    # steps 1 and 10: deleting step 1's adapter must not take step 10's (a shared key prefix)
    done = finished_job(client_a, train_file, database_url, store, steps=(1, 10))
    ckpt_name, ckpt_key = done.checkpoints[1][1], done.checkpoints[1][2]
    assert client_a.models.delete(ckpt_name).deleted is True
    assert not store.exists(f"{ckpt_key}/adapter_model.safetensors")
    listed = {m.id for m in client_a.models.list()}
    assert ckpt_name not in listed
    assert done.fine_tuned_model in listed and done.checkpoints[10][1] in listed
    assert store.exists(f"{done.checkpoints[10][2]}/adapter_model.safetensors")
    assert store.exists(f"{done.final_key}/adapter_model.safetensors")


def test_delete_base_model_is_forbidden(client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    err = error_of(http_a.delete(f"/v1/models/{BASE}"), 403)
    assert BASE in err["message"]
    with pytest.raises(openai.PermissionDeniedError):
        client_a.models.delete(BASE)
    assert client_a.models.retrieve(BASE).id == BASE


def test_delete_unknown(client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    name = "ft:SmolLM2-135M-Instruct:alpha:none:doesnotexist"
    error_of(http_a.delete(model_path(name)), 404, code="model_not_found")
    with pytest.raises(openai.NotFoundError) as info:
        client_a.models.delete(name)
    assert info.value.code == "model_not_found"
