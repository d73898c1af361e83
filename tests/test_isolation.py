"""Projects are walls: project beta sees nothing of alpha's files, uploads, jobs or models,
and every attempt on alpha's ids answers exactly as a missing id would (no existence
oracle). Alpha's objects are unchanged afterwards. Keys: a bad or missing key is a 401."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from helpers_db import FinishedJob, server_store, succeed_job
from spec import assert_error_envelope, validate

from service.core.ids import new_id

BASE = "SmolLM2-135M-Instruct"
JOBS = "/v1/fine_tuning/jobs"
TRAIN_BYTES = b"".join(
    json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}).encode() + b"\n"
    for i in range(3)
)


@dataclass
class AlphaObjects:
    file_id: str
    job_id: str
    job_body: dict[str, Any]
    finished: FinishedJob
    upload_id: str
    part_id: str
    metadata_tag: str


@pytest.fixture(scope="module")
def anon(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root_url) as client:
        yield client


@pytest.fixture(scope="module")
def alpha(client_a: openai.OpenAI, http_a: httpx.Client, server: Any, database_url: str) -> AlphaObjects:
    file_id = client_a.files.create(file=("alpha.jsonl", TRAIN_BYTES), purpose="fine-tune").id
    tag = new_id("tag-")
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=file_id, suffix="iso", metadata={"tag": tag})
    job_body = http_a.get(f"{JOBS}/{job.id}").json()
    done = client_a.fine_tuning.jobs.create(model=BASE, training_file=file_id, suffix="iso")
    finished = succeed_job(database_url, done.id, "alpha", store=server_store(server), steps=[7])
    upload = http_a.post(
        "/v1/uploads", json={"filename": "big.jsonl", "purpose": "fine-tune", "bytes": 8, "mime_type": "text/jsonl"}
    )
    assert upload.status_code == 200, upload.text
    upload_id = upload.json()["id"]
    part = http_a.post(f"/v1/uploads/{upload_id}/parts", files={"data": ("part", b'{"a":1}\n')})
    assert part.status_code == 200, part.text
    return AlphaObjects(file_id, job.id, job_body, finished, upload_id, part.json()["id"], tag)


def model_path(name: str) -> str:
    return "/v1/models/" + urllib.parse.quote(name, safe="")


def assert_like_missing(real: httpx.Response, real_id: str, fake: httpx.Response, fake_id: str) -> None:
    """`real` (another project's id) must be indistinguishable from `fake` (an id that never
    existed): same status, same envelope, same message apart from the id itself."""
    assert real.status_code == 404, (real.status_code, real.text)
    assert fake.status_code == 404, (fake.status_code, fake.text)
    assert real_id in assert_error_envelope(real, 404)["message"]
    assert real.text.replace(real_id, "<id>") == fake.text.replace(fake_id, "<id>")
    assert real.headers.get("content-type") == fake.headers.get("content-type")


def probe(client: httpx.Client, method: str, path: str, real_id: str, fake_id: str, **kw: Any) -> None:
    real = client.request(method, path.format(id=real_id), **kw)
    fake = client.request(method, path.format(id=fake_id), **kw)
    assert_like_missing(real, real_id, fake, fake_id)


# --- lists -----------------------------------------------------------------------------


def test_lists_exclude_other_projects(client_b: openai.OpenAI, http_b: httpx.Client, alpha: AlphaObjects) -> None:
    files = http_b.get("/v1/files").json()
    assert alpha.file_id not in {f["id"] for f in files["data"]}
    assert alpha.file_id not in {f.id for f in client_b.files.list()}
    assert alpha.file_id not in {f["id"] for f in http_b.get("/v1/files", params={"purpose": "fine-tune"}).json()["data"]}

    job_ids = {j.id for j in client_b.fine_tuning.jobs.list(limit=100)}
    assert alpha.job_id not in job_ids and alpha.finished.job_id not in job_ids
    assert list(client_b.fine_tuning.jobs.list(metadata={"tag": alpha.metadata_tag})) == []
    nulls = http_b.get(JOBS, params={"metadata": "null", "limit": 100}).json()["data"]
    assert alpha.finished.job_id not in {j["id"] for j in nulls}

    models = http_b.get("/v1/models").json()
    validate(models, "ListModelsResponse")
    names = {m["id"] for m in models["data"]}
    assert BASE in names
    alpha_models = {alpha.finished.fine_tuned_model, alpha.finished.checkpoints[7][1]}
    assert not names & alpha_models
    assert not any(":alpha:" in name for name in names)


def test_after_cursor_from_another_project(http_b: httpx.Client, http_a: httpx.Client, alpha: AlphaObjects) -> None:
    probe(http_b, "GET", "/v1/files?after={id}", alpha.file_id, new_id("file-"))
    probe(http_b, "GET", JOBS + "?after={id}", alpha.job_id, new_id("ftjob-"))
    # beta's own job, with alpha's event or checkpoint as the cursor
    own_file = http_b.post("/v1/files", files={"file": ("b.jsonl", TRAIN_BYTES)}, data={"purpose": "fine-tune"})
    own = http_b.post(JOBS, json={"model": BASE, "training_file": own_file.json()["id"]}).json()["id"]
    alpha_event = http_a.get(f"{JOBS}/{alpha.job_id}/events").json()["data"][0]["id"]
    probe(http_b, "GET", f"{JOBS}/{own}/events?after={{id}}", alpha_event, new_id("ftevent-"))
    alpha_ckpt = alpha.finished.checkpoints[7][0]
    probe(http_b, "GET", f"{JOBS}/{own}/checkpoints?after={{id}}", alpha_ckpt, new_id("ftckpt-"))


# --- files and uploads -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/files/{id}"), ("GET", "/v1/files/{id}/content"), ("DELETE", "/v1/files/{id}")],
)
def test_files_of_another_project(http_b: httpx.Client, alpha: AlphaObjects, method: str, path: str) -> None:
    probe(http_b, method, path, alpha.file_id, new_id("file-"))


def test_files_sdk(client_b: openai.OpenAI, alpha: AlphaObjects) -> None:
    with pytest.raises(openai.NotFoundError):
        client_b.files.retrieve(alpha.file_id)
    with pytest.raises(openai.NotFoundError):
        client_b.files.content(alpha.file_id)
    with pytest.raises(openai.NotFoundError):
        client_b.files.delete(alpha.file_id)


def test_uploads_of_another_project(http_b: httpx.Client, alpha: AlphaObjects) -> None:
    fake = new_id("upload_")
    probe(http_b, "POST", "/v1/uploads/{id}/parts", alpha.upload_id, fake, files={"data": ("p", b"x")})
    probe(http_b, "POST", "/v1/uploads/{id}/complete", alpha.upload_id, fake, json={"part_ids": [alpha.part_id]})
    probe(http_b, "POST", "/v1/uploads/{id}/cancel", alpha.upload_id, fake)


def test_training_file_of_another_project(http_b: httpx.Client, alpha: AlphaObjects) -> None:
    fake = new_id("file-")
    real = http_b.post(JOBS, json={"model": BASE, "training_file": alpha.file_id})
    missing = http_b.post(JOBS, json={"model": BASE, "training_file": fake})
    assert real.status_code == missing.status_code == 400, real.text
    assert real.json()["error"]["param"] == "training_file"
    assert real.text.replace(alpha.file_id, "<id>") == missing.text.replace(fake, "<id>")


# --- jobs ------------------------------------------------------------------------------

JOB_ROUTES = [
    ("GET", JOBS + "/{id}"),
    ("POST", JOBS + "/{id}/cancel"),
    ("POST", JOBS + "/{id}/pause"),
    ("POST", JOBS + "/{id}/resume"),
    ("GET", JOBS + "/{id}/events"),
    ("GET", JOBS + "/{id}/checkpoints"),
]


@pytest.mark.parametrize(("method", "path"), JOB_ROUTES)
def test_jobs_of_another_project(http_b: httpx.Client, alpha: AlphaObjects, method: str, path: str) -> None:
    probe(http_b, method, path, alpha.job_id, new_id("ftjob-"))
    probe(http_b, method, path, alpha.finished.job_id, new_id("ftjob-"))


def test_jobs_sdk(client_b: openai.OpenAI, alpha: AlphaObjects) -> None:
    jobs = client_b.fine_tuning.jobs
    for call in (jobs.retrieve, jobs.cancel, jobs.pause, jobs.resume, jobs.list_events, jobs.checkpoints.list):
        with pytest.raises(openai.NotFoundError):
            call(alpha.job_id)


# --- models ----------------------------------------------------------------------------


def test_models_of_another_project(client_b: openai.OpenAI, http_b: httpx.Client, alpha: AlphaObjects) -> None:
    for name in (alpha.finished.fine_tuned_model, alpha.finished.checkpoints[7][1]):
        fake = name.replace(alpha.finished.job_id.removeprefix("ftjob-"), new_id(""))
        for method in ("GET", "DELETE"):
            real = http_b.request(method, model_path(name))
            missing = http_b.request(method, model_path(fake))
            assert real.json()["error"]["code"] == "model_not_found"
            assert_like_missing(real, name, missing, fake)
        with pytest.raises(openai.NotFoundError):
            client_b.models.retrieve(name)
        with pytest.raises(openai.NotFoundError):
            client_b.models.delete(name)


# --- alpha is untouched ----------------------------------------------------------------


def test_alpha_objects_unchanged(client_a: openai.OpenAI, http_a: httpx.Client, server: Any, alpha: AlphaObjects) -> None:
    # runs after the probes above (file order): nothing beta did changed alpha's objects
    assert http_a.get(f"{JOBS}/{alpha.job_id}").json() == alpha.job_body
    assert alpha.job_body["status"] == "validating_files"
    events = [e.message for e in client_a.fine_tuning.jobs.list_events(alpha.job_id)]
    assert events == [f"Created fine-tuning job: {alpha.job_id}"]
    assert client_a.fine_tuning.jobs.retrieve(alpha.finished.job_id).status == "succeeded"
    assert client_a.files.retrieve(alpha.file_id).id == alpha.file_id
    assert client_a.files.content(alpha.file_id).read() == TRAIN_BYTES
    for name in (alpha.finished.fine_tuned_model, alpha.finished.checkpoints[7][1]):
        assert client_a.models.retrieve(name).id == name
    store = server_store(server)
    assert store.exists(f"{alpha.finished.final_key}/adapter_model.safetensors")
    # the upload is still pending with its part: alpha can complete it
    done = http_a.post(f"/v1/uploads/{alpha.upload_id}/complete", json={"part_ids": [alpha.part_id]})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    assert client_a.files.content(done.json()["file"]["id"]).read() == b'{"a":1}\n'


# --- keys ------------------------------------------------------------------------------


def test_bad_key(server: Any) -> None:
    bad = "sk-tailor-" + "x" * 43
    with openai.OpenAI(base_url=server.base_url, api_key=bad, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            client.models.list()
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    with httpx.Client(base_url=server.root_url, headers={"Authorization": f"Bearer {bad}"}) as http:
        resp = http.get("/v1/fine_tuning/jobs")
    err = assert_error_envelope(resp, 401)
    assert err["code"] == "invalid_api_key"
    assert bad not in err["message"], "the key must not be echoed back whole"


AUTH_ROUTES = [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/" + BASE),
    ("DELETE", "/v1/models/" + BASE),
    ("GET", "/v1/files"),
    ("GET", "/v1/files/file-abc"),
    ("GET", JOBS),
    ("GET", JOBS + "/ftjob-abc"),
    ("POST", JOBS + "/ftjob-abc/cancel"),
    ("GET", JOBS + "/ftjob-abc/events"),
    ("POST", "/v1/uploads/upload_abc/cancel"),
]


@pytest.mark.parametrize(("method", "path"), AUTH_ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer sk-tailor-wrong"])
def test_missing_or_bad_authorization(anon: httpx.Client, method: str, path: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    resp = anon.request(method, path, headers=headers)
    err = assert_error_envelope(resp, 401)
    if authorization == "Bearer sk-tailor-wrong":
        assert err["code"] == "invalid_api_key"


def test_key_is_checked_before_the_body(anon: httpx.Client) -> None:
    # No key and an invalid body: the caller learns about the key, nothing about validation.
    resp = anon.post(JOBS, json={"model": BASE, "n_epochs": "lots"})
    assert resp.status_code == 401, resp.text
    resp = anon.post("/v1/uploads", json={"bytes": -1})
    assert resp.status_code == 401, resp.text
    resp = anon.post("/v1/files", files={"file": ("x.jsonl", b"{}\n")}, data={"purpose": "fine-tune"})
    assert resp.status_code == 401, resp.text
