"""The fine-tuning jobs API against a real `tailor serve`, Redis and database, through the
official `openai` SDK and raw HTTP: create (and its validation), the arq queue, list,
retrieve, cancel/pause/resume, events and checkpoints."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from helpers_db import add_checkpoints, redis_client, start_job, succeed_job
from spec import assert_error_envelope, validate

from service.core.ids import new_id

BASE = "SmolLM2-135M-Instruct"
JOBS = "/v1/fine_tuning/jobs"
AUTO_HP = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
TRAIN_LINES = [
    {"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"Arr, {i}!"}]} for i in range(5)
]
TRAIN_BYTES = "".join(json.dumps(line) + "\n" for line in TRAIN_LINES).encode()


# --- helpers ---------------------------------------------------------------------------


def error_of(resp: httpx.Response, status: int, *, param: Any = ..., code: Any = ...) -> dict[str, Any]:
    """Check an error response: status, OpenAI envelope, and (when given) param and code."""
    err = assert_error_envelope(resp, status)
    assert set(err) == {"message", "type", "param", "code"}, err
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    return err


def job_json(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    validate(body, "FineTuningJob")
    assert body["object"] == "fine_tuning.job"
    return body


def create_raw(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post(JOBS, json=body)


def sdk_create(client: openai.OpenAI, **kwargs: Any) -> dict[str, Any]:
    """Create through the SDK; return the raw JSON (validated) the server sent."""
    raw = client.fine_tuning.jobs.with_raw_response.create(**kwargs)
    body = raw.http_response.json()
    validate(body, "FineTuningJob")
    parsed = raw.parse()
    assert parsed.id == body["id"] and parsed.status == body["status"]
    return body


def upload(client: openai.OpenAI, purpose: str = "fine-tune", data: bytes = TRAIN_BYTES) -> str:
    return client.files.create(file=("train.jsonl", data), purpose=purpose).id  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def train_file(client_a: openai.OpenAI) -> str:
    return upload(client_a)


@pytest.fixture(scope="module")
def new_job(client_a: openai.OpenAI, train_file: str):
    def make(**kwargs: Any) -> dict[str, Any]:
        return sdk_create(client_a, model=BASE, training_file=train_file, **kwargs)

    return make


# --- create ----------------------------------------------------------------------------


def test_create_with_defaults(client_a: openai.OpenAI, train_file: str, http_a: httpx.Client) -> None:
    before = int(time.time())
    job = sdk_create(client_a, model=BASE, training_file=train_file)
    after = int(time.time())
    assert job["id"].startswith("ftjob-")
    assert job["status"] == "validating_files"
    assert job["model"] == BASE
    assert job["training_file"] == train_file
    assert job["validation_file"] is None
    assert before <= job["created_at"] <= after
    assert job["finished_at"] is None
    assert job["fine_tuned_model"] is None
    assert job["trained_tokens"] is None
    assert job["error"] is None
    assert job["result_files"] == []
    assert job["metadata"] is None
    assert job["user_provided_suffix"] is None
    assert job["integrations"] is None
    assert isinstance(job["organization_id"], str) and job["organization_id"]
    # method defaults to supervised, every hyperparameter "auto"; the legacy field mirrors it
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": AUTO_HP}}
    assert job["hyperparameters"] == AUTO_HP
    # a seed is generated and is a valid 32-bit seed
    assert isinstance(job["seed"], int) and 0 <= job["seed"] <= 2**31 - 1
    # the default LoRA shape is shown
    assert isinstance(job["lora"], dict) and job["lora"]["rank"] >= 1
    # and the job reads back the same
    assert job_json(http_a.get(f"{JOBS}/{job['id']}")) == job


def test_generated_seeds_differ(new_job) -> None:
    seeds = {new_job()["seed"] for _ in range(3)}
    assert len(seeds) == 3, "seeds should be drawn at random when the request gives none"


def test_create_keeps_given_fields(client_a: openai.OpenAI, train_file: str, http_a: httpx.Client) -> None:
    validation = upload(client_a)
    integrations = [{"type": "wandb", "wandb": {"project": "tailor-tests", "name": "run-1", "tags": ["a", "b"]}}]
    job = sdk_create(
        client_a,
        model=BASE,
        training_file=train_file,
        validation_file=validation,
        seed=1234,
        suffix="pirate-v1.2_x",
        metadata={"team": "ml", "ticket": "T-42"},
        integrations=integrations,  # type: ignore[arg-type]
        extra_body={"lora": {"rank": 8}},
    )
    assert job["seed"] == 1234
    assert job["validation_file"] == validation
    assert job["user_provided_suffix"] == "pirate-v1.2_x"
    assert job["metadata"] == {"team": "ml", "ticket": "T-42"}
    assert len(job["integrations"]) == 1
    wandb = job["integrations"][0]
    assert wandb["type"] == "wandb"
    assert wandb["wandb"]["project"] == "tailor-tests"
    assert wandb["wandb"]["name"] == "run-1"
    assert wandb["wandb"]["tags"] == ["a", "b"]
    assert job["lora"]["rank"] == 8
    stored = job_json(http_a.get(f"{JOBS}/{job['id']}"))
    assert stored == job
    # the SDK shows the extension too
    assert client_a.fine_tuning.jobs.retrieve(job["id"]).model_extra["lora"]["rank"] == 8  # type: ignore[index]


def test_seed_zero_is_kept(new_job) -> None:
    assert new_job(seed=0)["seed"] == 0


def test_legacy_hyperparameters_map_into_method(new_job) -> None:
    job = new_job(hyperparameters={"n_epochs": 2})
    expected = {**AUTO_HP, "n_epochs": 2}
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": expected}}
    assert job["hyperparameters"] == expected


def test_supervised_method_hyperparameters(new_job) -> None:
    hp = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5}
    job = new_job(method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": hp}}
    assert job["hyperparameters"] == hp


def test_dpo_method(new_job) -> None:
    job = new_job(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"] == {**AUTO_HP, "beta": 0.1}
    assert "supervised" not in job["method"] or job["method"]["supervised"] is None


def test_job_is_put_on_the_arq_queue(new_job, redis_url: str, queue_name: str) -> None:
    job = new_job()
    with redis_client(redis_url) as r:
        raw = r.get(f"arq:job:{job['id']}")
        assert raw is not None, "the arq job id must be the fine-tuning job id"
        assert r.zscore(queue_name, job["id"]) is not None, f"{job['id']} is not waiting in {queue_name}"
        payload = json.loads(raw)  # JSON, not pickle (ARCHITECTURE.md)
        assert payload["f"] == "run_fine_tuning_job"
        assert payload["a"] == [job["id"]]


# --- create: validation ----------------------------------------------------------------

METADATA_17 = {f"k{i}": "v" for i in range(17)}

BAD_BODIES = [
    pytest.param({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", id="n_epochs-0"),
    pytest.param({"hyperparameters": {"n_epochs": 51}}, "hyperparameters.n_epochs", id="n_epochs-51"),
    pytest.param(
        {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 51}}}},
        "method.supervised.hyperparameters.n_epochs",
        id="method-n_epochs-51",
    ),
    pytest.param({"hyperparameters": {"batch_size": 257}}, "hyperparameters.batch_size", id="batch_size-257"),
    pytest.param(
        {"hyperparameters": {"learning_rate_multiplier": 0}},
        "hyperparameters.learning_rate_multiplier",
        id="lr-0",
    ),
    pytest.param(
        {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}},
        "method.dpo.hyperparameters.beta",
        id="beta-3",
    ),
    pytest.param({"suffix": "s" * 65}, "suffix", id="suffix-65"),
    pytest.param({"suffix": "a:b"}, "suffix", id="suffix-colon"),
    pytest.param({"metadata": METADATA_17}, "metadata", id="metadata-17-keys"),
    pytest.param({"metadata": {"k" * 65: "v"}}, "metadata", id="metadata-long-key"),
    pytest.param({"metadata": {"k": "v" * 513}}, "metadata", id="metadata-long-value"),
    pytest.param({"seed": -1}, "seed", id="seed-negative"),
    pytest.param({"n_gpus": 8}, "n_gpus", id="unknown-field"),
    pytest.param(
        {"hyperparameters": {"n_epochs": 2}, "method": {"type": "supervised"}},
        "hyperparameters",
        id="hyperparameters-and-method",
    ),
    pytest.param({"method": {"type": "reinforcement"}}, "method.type", id="reinforcement"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_BODIES)
def test_create_rejects_invalid_body(http_a: httpx.Client, train_file: str, extra: dict[str, Any], param: str) -> None:
    before = http_a.get(JOBS, params={"limit": 1}).json()["data"]
    err = error_of(create_raw(http_a, model=BASE, training_file=train_file, **extra), 400, param=param)
    assert param.split(".")[-1] in err["message"], err
    # nothing was created
    assert http_a.get(JOBS, params={"limit": 1}).json()["data"] == before


def test_create_rejects_missing_training_file(http_a: httpx.Client) -> None:
    err = error_of(create_raw(http_a, model=BASE), 400, param="training_file")
    assert "training_file" in err["message"]


def test_create_rejects_malformed_json(http_a: httpx.Client) -> None:
    resp = http_a.post(JOBS, content=b'{"model": "SmolLM2-135M-Instruct", ', headers={"content-type": "application/json"})
    err = error_of(resp, 400)
    assert "JSON" in err["message"]


def test_create_rejects_unknown_model(client_a: openai.OpenAI, http_a: httpx.Client, train_file: str) -> None:
    err = error_of(create_raw(http_a, model="gpt-nonexistent", training_file=train_file), 404, code="model_not_found")
    assert err["param"] == "model"
    assert "gpt-nonexistent" in err["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client_a.fine_tuning.jobs.create(model="gpt-nonexistent", training_file=train_file)
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize("field", ["training_file", "validation_file"])
def test_create_rejects_unusable_files(
    client_a: openai.OpenAI, client_b: openai.OpenAI, http_a: httpx.Client, train_file: str, field: str
) -> None:
    wrong_purpose = upload(client_a, purpose="assistants", data=b"not for fine-tuning")
    missing = new_id("file-")
    other_project = upload(client_b)

    def attempt(file_id: str) -> dict[str, Any]:
        body = {"model": BASE, "training_file": train_file, field: file_id}
        return error_of(http_a.post(JOBS, json=body), 400, param=field)

    err = attempt(wrong_purpose)
    assert "fine-tune" in err["message"] and wrong_purpose in err["message"]
    err_missing = attempt(missing)
    assert missing in err_missing["message"]
    # another project's file is refused exactly like a file that does not exist
    err_other = attempt(other_project)
    assert err_other["message"].replace(other_project, "<id>") == err_missing["message"].replace(missing, "<id>")
    with pytest.raises(openai.BadRequestError) as info:
        client_a.fine_tuning.jobs.create(model=BASE, **{"training_file": train_file, field: missing})  # type: ignore[arg-type]
    assert info.value.param == field


# --- list and retrieve -----------------------------------------------------------------


def test_list_newest_first_with_pagination(client_a: openai.OpenAI, http_a: httpx.Client, new_job) -> None:
    tag = uuid.uuid4().hex
    ids = [new_job(metadata={"batch": tag, "n": str(i)})["id"] for i in range(3)]
    newest_first = ids[::-1]

    resp = http_a.get(JOBS, params={"limit": 3})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    validate(body, "ListPaginatedFineTuningJobsResponse")
    assert body["object"] == "list"
    assert [j["id"] for j in body["data"]] == newest_first

    page = client_a.fine_tuning.jobs.list(limit=2, metadata={"batch": tag})
    assert [j.id for j in page.data] == newest_first[:2]
    assert page.has_more is True
    page2 = client_a.fine_tuning.jobs.list(limit=2, after=page.data[-1].id, metadata={"batch": tag})
    assert [j.id for j in page2.data] == newest_first[2:]
    assert page2.has_more is False
    # the SDK's auto-pagination walks the same pages
    walked = [j.id for j in client_a.fine_tuning.jobs.list(limit=1, metadata={"batch": tag})]
    assert walked == newest_first


def test_list_metadata_filters(client_a: openai.OpenAI, http_a: httpx.Client, new_job) -> None:
    tag = uuid.uuid4().hex
    red = new_job(metadata={"tag": tag, "color": "red"})["id"]
    blue = new_job(metadata={"tag": tag, "color": "blue"})["id"]
    bare = new_job()["id"]

    assert [j.id for j in client_a.fine_tuning.jobs.list(metadata={"tag": tag})] == [blue, red]
    assert [j.id for j in client_a.fine_tuning.jobs.list(metadata={"tag": tag, "color": "red"})] == [red]
    assert list(client_a.fine_tuning.jobs.list(metadata={"tag": tag, "color": "green"})) == []
    assert list(client_a.fine_tuning.jobs.list(metadata={"tag": uuid.uuid4().hex})) == []

    resp = http_a.get(JOBS, params={"metadata": "null", "limit": 100})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    validate(body, "ListPaginatedFineTuningJobsResponse")
    ids = [j["id"] for j in body["data"]]
    assert bare in ids
    assert red not in ids and blue not in ids
    assert all(j["metadata"] is None for j in body["data"])


@pytest.mark.parametrize("key", ["team.name", "équipe", 'say "hi"', "back\\slash", "$[0]"])
def test_list_metadata_filter_any_key(client_a: openai.OpenAI, new_job, key: str) -> None:
    # Metadata keys are any string of up to 64 characters; the filter must find each.
    value = f"v-{uuid.uuid4().hex}-ü"
    job_id = new_job(metadata={key: value})["id"]
    assert [j.id for j in client_a.fine_tuning.jobs.list(metadata={key: value})] == [job_id]


@pytest.mark.parametrize("limit", [0, 101, "many"])
def test_list_rejects_bad_limit(http_a: httpx.Client, limit: Any) -> None:
    error_of(http_a.get(JOBS, params={"limit": limit}), 400, param="limit")


def test_retrieve(client_a: openai.OpenAI, http_a: httpx.Client, new_job) -> None:
    job = new_job(suffix="r1")
    got = client_a.fine_tuning.jobs.retrieve(job["id"])
    assert got.id == job["id"] and got.user_provided_suffix == "r1"
    assert job_json(http_a.get(f"{JOBS}/{job['id']}")) == job


def test_retrieve_unknown_job(client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    missing = new_id("ftjob-")
    err = error_of(http_a.get(f"{JOBS}/{missing}"), 404)
    assert missing in err["message"]
    with pytest.raises(openai.NotFoundError):
        client_a.fine_tuning.jobs.retrieve(missing)


# --- cancel, pause, resume -------------------------------------------------------------


def _signal(redis_url: str, job_id: str) -> bytes | None:
    with redis_client(redis_url) as r:
        return r.get(f"tailor:signal:{job_id}")


def _on_queue(redis_url: str, queue_name: str, job_id: str) -> bool:
    with redis_client(redis_url) as r:
        return bool(r.exists(f"arq:job:{job_id}")) and r.zscore(queue_name, job_id) is not None


def _drop_from_queue(redis_url: str, queue_name: str, job_id: str) -> None:
    """What a worker does when it takes a job off the queue (and then stops on a pause)."""
    with redis_client(redis_url) as r:
        r.zrem(queue_name, job_id)
        r.delete(f"arq:job:{job_id}")


def test_pause_resume_cancel(client_a: openai.OpenAI, http_a: httpx.Client, new_job, redis_url: str, queue_name: str) -> None:
    job_id = new_job()["id"]

    paused = job_json(http_a.post(f"{JOBS}/{job_id}/pause"))
    assert paused["status"] == "paused"
    assert paused["finished_at"] is None
    assert _signal(redis_url, job_id) == b"pause"
    assert client_a.fine_tuning.jobs.retrieve(job_id).status == "paused"

    _drop_from_queue(redis_url, queue_name, job_id)
    resumed = client_a.fine_tuning.jobs.with_raw_response.resume(job_id).http_response
    body = job_json(resumed)
    assert body["status"] == "queued"
    assert body["finished_at"] is None
    assert _on_queue(redis_url, queue_name, job_id), "a resumed job must be put back on the queue"

    before = int(time.time())
    cancelled = job_json(http_a.post(f"{JOBS}/{job_id}/cancel"))
    assert cancelled["status"] == "cancelled"
    assert isinstance(cancelled["finished_at"], int) and cancelled["finished_at"] >= before - 1
    assert cancelled["estimated_finish"] is None
    assert _signal(redis_url, job_id) == b"cancel"
    got = client_a.fine_tuning.jobs.retrieve(job_id)
    assert got.status == "cancelled" and got.finished_at == cancelled["finished_at"]


def test_resume_clears_the_stale_pause_signal(http_a: httpx.Client, new_job, redis_url: str) -> None:
    # The worker checks the signal key as well as the pub/sub message (queue.send_signal);
    # a "pause" left behind by the pause that preceded a resume would stop the resumed run
    # as soon as a worker picks it up.
    job_id = new_job()["id"]
    http_a.post(f"{JOBS}/{job_id}/pause").raise_for_status()
    assert _signal(redis_url, job_id) == b"pause"
    assert job_json(http_a.post(f"{JOBS}/{job_id}/resume"))["status"] == "queued"
    assert _signal(redis_url, job_id) is None


def test_sdk_cancel_pause(client_a: openai.OpenAI, new_job) -> None:
    job_id = new_job()["id"]
    assert client_a.fine_tuning.jobs.pause(job_id).status == "paused"
    cancelled = client_a.fine_tuning.jobs.cancel(job_id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None


def _refused(http: httpx.Client, job_id: str, action: str, status_word: str) -> None:
    err = error_of(http.post(f"{JOBS}/{job_id}/{action}"), 400)
    message = err["message"]
    assert action in message.lower(), message
    assert job_id in message, message
    assert status_word in message, message


def test_illegal_transitions(client_a: openai.OpenAI, http_a: httpx.Client, new_job, database_url: str) -> None:
    # validating_files → resume refused
    fresh = new_job()["id"]
    _refused(http_a, fresh, "resume", "validating_files")

    # queued (after pause + resume) → resume refused
    http_a.post(f"{JOBS}/{fresh}/pause").raise_for_status()
    http_a.post(f"{JOBS}/{fresh}/resume").raise_for_status()
    _refused(http_a, fresh, "resume", "queued")
    # paused → pause refused
    http_a.post(f"{JOBS}/{fresh}/pause").raise_for_status()
    _refused(http_a, fresh, "pause", "paused")

    # cancelled → cancel, pause, resume refused, and the job is unchanged
    cancelled = job_json(http_a.post(f"{JOBS}/{fresh}/cancel"))
    for action in ("cancel", "pause", "resume"):
        _refused(http_a, fresh, action, "cancelled")
    assert job_json(http_a.get(f"{JOBS}/{fresh}")) == cancelled
    with pytest.raises(openai.BadRequestError) as info:
        client_a.fine_tuning.jobs.cancel(fresh)
    assert info.value.status_code == 400

    # running → resume refused; pause allowed
    running = new_job()["id"]
    start_job(database_url, running)
    assert client_a.fine_tuning.jobs.retrieve(running).status == "running"
    _refused(http_a, running, "resume", "running")
    assert job_json(http_a.post(f"{JOBS}/{running}/pause"))["status"] == "paused"

    # succeeded → cancel and pause refused
    done = new_job()["id"]
    succeed_job(database_url, done, "alpha")
    succeeded = job_json(http_a.get(f"{JOBS}/{done}"))
    assert succeeded["status"] == "succeeded"
    for action in ("cancel", "pause", "resume"):
        _refused(http_a, done, action, "succeeded")
    assert job_json(http_a.get(f"{JOBS}/{done}")) == succeeded


def test_concurrent_cancels_have_one_winner(http_a: httpx.Client, new_job) -> None:
    job_id = new_job()["id"]
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: http_a.post(f"{JOBS}/{job_id}/cancel").status_code, range(6)))
    assert sorted(statuses) == [200] + [400] * 5, statuses
    messages = [e["message"] for e in http_a.get(f"{JOBS}/{job_id}/events").json()["data"]]
    assert messages.count("Fine-tuning job cancelled") == 1, messages


@pytest.mark.parametrize("action", ["cancel", "pause", "resume"])
def test_control_unknown_job(http_a: httpx.Client, action: str) -> None:
    missing = new_id("ftjob-")
    err = error_of(http_a.post(f"{JOBS}/{missing}/{action}"), 404)
    assert missing in err["message"]


# --- events ----------------------------------------------------------------------------


def test_events(client_a: openai.OpenAI, http_a: httpx.Client, new_job) -> None:
    job_id = new_job()["id"]
    for action in ("pause", "resume", "cancel"):
        http_a.post(f"{JOBS}/{job_id}/{action}").raise_for_status()

    resp = http_a.get(f"{JOBS}/{job_id}/events")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    validate(body, "ListFineTuningJobEventsResponse")
    assert body["object"] == "list" and body["has_more"] is False
    messages = [e["message"] for e in body["data"]]
    assert messages == [
        "Fine-tuning job cancelled",
        "Fine-tuning job resumed",
        "Fine-tuning job paused",
        f"Created fine-tuning job: {job_id}",
    ]
    for event in body["data"]:
        assert event["id"].startswith("ftevent-")
        assert event["object"] == "fine_tuning.job.event"
        assert event["level"] == "info"
        assert event["type"] == "message"
    stamps = [e["created_at"] for e in body["data"]]
    assert stamps == sorted(stamps, reverse=True)

    ids = [e["id"] for e in body["data"]]
    page = client_a.fine_tuning.jobs.list_events(job_id, limit=2)
    assert [e.id for e in page.data] == ids[:2] and page.has_more is True
    page2 = client_a.fine_tuning.jobs.list_events(job_id, limit=2, after=ids[1])
    assert [e.id for e in page2.data] == ids[2:] and page2.has_more is False
    page3 = client_a.fine_tuning.jobs.list_events(job_id, limit=1, after=ids[2])
    assert [e.id for e in page3.data] == ids[3:] and page3.has_more is False
    assert [e.id for e in client_a.fine_tuning.jobs.list_events(job_id, limit=1)] == ids


def test_events_of_another_job_are_not_a_cursor(http_a: httpx.Client, new_job) -> None:
    one, two = new_job()["id"], new_job()["id"]
    other_event = http_a.get(f"{JOBS}/{two}/events").json()["data"][0]["id"]
    resp = http_a.get(f"{JOBS}/{one}/events", params={"after": other_event})
    assert resp.status_code in (400, 404), resp.text
    error_of(resp, resp.status_code)


# --- checkpoints -----------------------------------------------------------------------


def test_checkpoints(client_a: openai.OpenAI, http_a: httpx.Client, new_job, database_url: str) -> None:
    job = new_job(suffix="ckpt")
    job_id = job["id"]

    empty = http_a.get(f"{JOBS}/{job_id}/checkpoints")
    assert empty.status_code == 200, empty.text
    validate(empty.json(), "ListFineTuningJobCheckpointsResponse")
    assert empty.json() == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert list(client_a.fine_tuning.jobs.checkpoints.list(job_id)) == []

    finished = succeed_job(database_url, job_id, "alpha", steps=[10, 20, 30])
    written = finished.checkpoints

    resp = http_a.get(f"{JOBS}/{job_id}/checkpoints")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    validate(body, "ListFineTuningJobCheckpointsResponse")
    data = body["data"]
    assert [c["step_number"] for c in data] == [30, 20, 10]
    assert [c["id"] for c in data] == [written[s][0] for s in (30, 20, 10)]
    assert body["first_id"] == data[0]["id"] and body["last_id"] == data[-1]["id"]
    assert body["has_more"] is False
    for ckpt in data:
        validate(ckpt, "FineTuningJobCheckpoint")
        step = ckpt["step_number"]
        assert ckpt["object"] == "fine_tuning.job.checkpoint"
        assert ckpt["fine_tuning_job_id"] == job_id
        assert ckpt["fine_tuned_model_checkpoint"] == f"{finished.fine_tuned_model}:ckpt-step-{step}"
        assert ckpt["metrics"]["step"] == step
        assert ckpt["metrics"]["train_loss"] == pytest.approx(2.0 / step)

    page = client_a.fine_tuning.jobs.checkpoints.list(job_id, limit=2)
    assert [c.step_number for c in page.data] == [30, 20] and page.has_more is True
    page2 = client_a.fine_tuning.jobs.checkpoints.list(job_id, limit=2, after=page.data[-1].id)
    assert [c.step_number for c in page2.data] == [10] and page2.has_more is False
    raw = http_a.get(f"{JOBS}/{job_id}/checkpoints", params={"limit": 1, "after": data[0]["id"]}).json()
    validate(raw, "ListFineTuningJobCheckpointsResponse")
    assert raw["first_id"] == raw["last_id"] == data[1]["id"] and raw["has_more"] is True

    # the job shows its final model now
    done = job_json(http_a.get(f"{JOBS}/{job_id}"))
    assert done["status"] == "succeeded"
    assert done["fine_tuned_model"] == finished.fine_tuned_model
    assert done["fine_tuned_model"] == f"ft:{BASE}:alpha:ckpt:{job_id.removeprefix('ftjob-')}"
    assert done["trained_tokens"] == 1234
    assert isinstance(done["finished_at"], int)


def test_checkpoints_of_a_running_job_appear_as_written(http_a: httpx.Client, new_job, database_url: str) -> None:
    job_id = new_job()["id"]
    start_job(database_url, job_id)
    add_checkpoints(database_url, job_id, "alpha", [5])
    first = http_a.get(f"{JOBS}/{job_id}/checkpoints").json()
    assert [c["step_number"] for c in first["data"]] == [5]
    add_checkpoints(database_url, job_id, "alpha", [15])
    second = http_a.get(f"{JOBS}/{job_id}/checkpoints").json()
    assert [c["step_number"] for c in second["data"]] == [15, 5]
    # the name of a job without a suffix keeps the empty slot
    assert second["data"][0]["fine_tuned_model_checkpoint"] == (f"ft:{BASE}:alpha::{job_id.removeprefix('ftjob-')}:ckpt-step-15")


def test_checkpoints_unknown_job(http_a: httpx.Client) -> None:
    missing = new_id("ftjob-")
    error_of(http_a.get(f"{JOBS}/{missing}/checkpoints"), 404)
    error_of(http_a.get(f"{JOBS}/{missing}/events"), 404)
