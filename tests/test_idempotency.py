"""`Idempotency-Key` on POST /v1/fine_tuning/jobs, /v1/files and /v1/uploads (issue 15), through
the official SDK against a real `tailor serve`: a retry gets the first answer, not a second object."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import httpx
import openai
import pytest
from conftest import TailorServer
from helpers_db import run_db
from spec import assert_error_envelope
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.ids import now
from service.core.tables import IdempotencyKey

BASE = "SmolLM2-135M-Instruct"
LINE = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
GOOD = (json.dumps(LINE) + "\n").encode() * 10


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}


@pytest.fixture(scope="module")
def train_file(client_a: openai.OpenAI) -> str:
    return client_a.files.create(file=("t.jsonl", GOOD), purpose="fine-tune").id


def test_a_retried_job_create_returns_the_first_job(client_a: openai.OpenAI, train_file: str) -> None:
    headers = key()
    first = client_a.fine_tuning.jobs.create(model=BASE, training_file=train_file, suffix="idem", extra_headers=headers)
    raw = client_a.fine_tuning.jobs.with_raw_response.create(
        model=BASE, training_file=train_file, suffix="idem", extra_headers=headers
    )
    again = raw.parse()
    assert again.id == first.id and again.created_at == first.created_at
    assert raw.headers["idempotent-replayed"] == "true"
    assert [j.id for j in client_a.fine_tuning.jobs.list(limit=100).data].count(first.id) == 1
    other = client_a.fine_tuning.jobs.create(model=BASE, training_file=train_file, suffix="idem", extra_headers=key())
    assert other.id != first.id, "another key is another request"


def test_a_key_reused_for_another_request_is_a_400(client_a: openai.OpenAI, train_file: str) -> None:
    headers = key()
    client_a.fine_tuning.jobs.create(model=BASE, training_file=train_file, suffix="a", extra_headers=headers)
    with pytest.raises(openai.BadRequestError) as exc:
        client_a.fine_tuning.jobs.create(model=BASE, training_file=train_file, suffix="b", extra_headers=headers)
    assert exc.value.code == "idempotency_key_reused" and exc.value.param == "idempotency-key"


def test_keys_are_per_project(client_a: openai.OpenAI, client_b: openai.OpenAI, train_file: str) -> None:
    headers = key()
    mine = client_a.files.create(file=("p.jsonl", GOOD), purpose="fine-tune", extra_headers=headers)
    theirs = client_b.files.create(file=("p.jsonl", GOOD), purpose="fine-tune", extra_headers=headers)
    assert mine.id != theirs.id


def test_a_retried_file_upload_returns_the_first_file(client_a: openai.OpenAI) -> None:
    headers = key()
    before = {f.id for f in client_a.files.list().data}
    first = client_a.files.create(file=("same.jsonl", GOOD), purpose="fine-tune", extra_headers=headers)
    again = client_a.files.create(file=("same.jsonl", GOOD), purpose="fine-tune", extra_headers=headers)
    assert again.id == first.id
    assert {f.id for f in client_a.files.list().data} - before == {first.id}


def test_a_failed_request_releases_its_key(client_a: openai.OpenAI) -> None:
    headers = key()
    bad = b"{not json}" + b" " * (len(GOOD) - 10)  # the same size, name and purpose as GOOD
    assert len(bad) == len(GOOD)
    with pytest.raises(openai.BadRequestError):
        client_a.files.create(file=("r.jsonl", bad), purpose="fine-tune", extra_headers=headers)
    made = client_a.files.create(file=("r.jsonl", GOOD), purpose="fine-tune", extra_headers=headers)
    assert client_a.files.retrieve(made.id).filename == "r.jsonl"


def test_a_retried_upload_create_returns_the_first_upload(http_a: httpx.Client) -> None:
    headers = key()
    body = {"filename": "u.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl"}
    first = http_a.post("/v1/uploads", json=body, headers=headers).json()
    again = http_a.post("/v1/uploads", json=body, headers=headers).json()
    assert again == first


def test_concurrent_retries_create_one_job(http_a: httpx.Client, train_file: str) -> None:
    headers = key()
    body = {"model": BASE, "training_file": train_file, "suffix": "race"}
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(http_a.post("/v1/fine_tuning/jobs", json=body, headers=headers))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    made = {a.json()["id"] for a in answers if a.status_code == 200}
    assert len(made) == 1, [a.text for a in answers]
    for answer in answers:
        if answer.status_code != 200:
            err = assert_error_envelope(answer, 409)
            assert answer.headers["retry-after"] == "1", err


@pytest.mark.parametrize("value", ["", "k" * 256])
def test_a_malformed_key_is_a_400(http_a: httpx.Client, train_file: str, value: str) -> None:
    body: dict[str, Any] = {"model": BASE, "training_file": train_file}
    resp = http_a.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": value})
    assert_error_envelope(resp, 400)


def test_the_janitor_forgets_keys_after_a_day(client_a: openai.OpenAI, server: TailorServer, database_url: str) -> None:
    headers = key()
    first = client_a.files.create(file=("day.jsonl", GOOD), purpose="fine-tune", extra_headers=headers)
    run_db(database_url, lambda s: _age(s, headers["Idempotency-Key"]))
    swept = server.cli("janitor").stdout  # the default grace: nothing of other tests' is touched
    assert "expired idempotency keys: 1" in swept, swept
    again = client_a.files.create(file=("day.jsonl", GOOD), purpose="fine-tune", extra_headers=headers)
    assert again.id != first.id, "a forgotten key is a new request"


async def _age(session: AsyncSession, idempotency_key: str) -> None:
    day_ago = now() - 24 * 3600 - 1
    await session.execute(update(IdempotencyKey).where(IdempotencyKey.key == idempotency_key).values(created_at=day_ago))
    await session.commit()
