"""Input that once gave a 5xx (issue 15's findings 1-4 and 9), against a real `tailor serve`
on this session's database: PostgreSQL in CI, where NUL characters and over-long strings
used to reach the driver, SQLite otherwise. Each answers 400 (or 404) in the envelope, names
the field at fault, and leaves nothing stored."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from spec import assert_error_envelope

BASE = "SmolLM2-135M-Instruct"
GOOD_LINE = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
GOOD_BYTES = (json.dumps(GOOD_LINE) + "\n").encode()


def error_of(resp: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    err = assert_error_envelope(resp, status)
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.fixture(scope="module")
def train_file(client_a: openai.OpenAI) -> str:
    return client_a.files.create(file=("train.jsonl", GOOD_BYTES * 10), purpose="fine-tune").id


def file_count(http: httpx.Client) -> int:
    return len(http.get("/v1/files").json()["data"])


# --- 1. NUL characters -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/files/%00", {}, None),
        ("/v1/files/file-%00abc/content", {}, None),
        ("/v1/fine_tuning/jobs/ftjob-%00", {}, None),
        ("/v1/models/ft:%00", {}, None),
        ("/v1/files", {"after": "\x00"}, "after"),
        ("/v1/files", {"purpose": "fine-tune\x00"}, "purpose"),
        ("/v1/fine_tuning/jobs", {"metadata[k]": "v\x00"}, "metadata[k]"),
        ("/v1/fine_tuning/jobs", {"after": "ftjob-\x00"}, "after"),
    ],
)
def test_nul_in_url_is_a_400(http_a: httpx.Client, path: str, params: dict[str, str], param: str | None) -> None:
    err = error_of(http_a.get(path, params=params), 400, param)
    assert "NUL" in err["message"], err


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"training_file": "file-\x00"}, "training_file"),
        ({"model": "Smol\x00"}, "model"),
        ({"suffix": "a\x00"}, "suffix"),
        ({"metadata": {"k": "v\x00"}}, "metadata"),
        ({"metadata": {"k\x00": "v"}}, "metadata"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p\x00"}}]}, "integrations[0].wandb.project"),
    ],
)
def test_nul_in_job_body_is_a_400(http_a: httpx.Client, train_file: str, body: dict[str, Any], param: str) -> None:
    before = http_a.get("/v1/fine_tuning/jobs", params={"limit": 1}).json()["data"]
    err = error_of(http_a.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": train_file, **body}), 400, param)
    assert "NUL" in err["message"], err
    assert http_a.get("/v1/fine_tuning/jobs", params={"limit": 1}).json()["data"] == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"filename": "a\x00.jsonl"}, "filename"),
        ({"mime_type": "text/jsonl\x00"}, "mime_type"),
    ],
)
def test_nul_in_upload_body_is_a_400(http_a: httpx.Client, body: dict[str, Any], param: str) -> None:
    upload = {"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl", **body}
    error_of(http_a.post("/v1/uploads", json=upload), 400, param)


def test_nul_in_upload_part_ids_is_a_400(http_a: httpx.Client) -> None:
    upload = {"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl"}
    upload_id = http_a.post("/v1/uploads", json=upload).json()["id"]
    error_of(http_a.post(f"/v1/uploads/{upload_id}/complete", json={"part_ids": ["part_\x00"]}), 400, "part_ids")


def test_nul_in_multipart_filename_is_a_400(http_a: httpx.Client) -> None:
    before = file_count(http_a)
    # Written by hand: httpx would percent-encode the NUL.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.jsonl"\r\n\r\n' + GOOD_BYTES + b"\r\n--b--\r\n"
    )
    resp = http_a.post("/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    error_of(resp, 400, "file")
    assert file_count(http_a) == before


def test_nul_in_chat_model_is_a_400(http_a: httpx.Client) -> None:
    body = {"model": "ft:\x00", "messages": [{"role": "user", "content": "hi"}]}
    error_of(http_a.post("/v1/chat/completions", json=body), 400, "model")


# --- 2. deeply nested JSONL ----------------------------------------------------------------

DEEP_LINE = b"[" * 1000 + b"]" * 1000 + b"\n"


def test_deeply_nested_line_is_refused_naming_it(http_a: httpx.Client) -> None:
    resp = http_a.post("/v1/files", files={"file": ("deep.jsonl", GOOD_BYTES + DEEP_LINE)}, data={"purpose": "fine-tune"})
    err = error_of(resp, 400, "file")
    assert "line 2" in err["message"] and "nested too deeply" in err["message"], err


def test_deeply_nested_line_through_uploads_is_refused(http_a: httpx.Client) -> None:
    data = GOOD_BYTES + DEEP_LINE
    upload = {"filename": "deep.jsonl", "purpose": "fine-tune", "bytes": len(data), "mime_type": "text/jsonl"}
    upload_id = http_a.post("/v1/uploads", json=upload).json()["id"]
    part = http_a.post(f"/v1/uploads/{upload_id}/parts", files={"data": ("part", data)})
    assert part.status_code == 200, part.text
    err = error_of(http_a.post(f"/v1/uploads/{upload_id}/complete", json={"part_ids": [part.json()["id"]]}), 400)
    assert "line 2" in err["message"], err


# --- 3. non-finite numbers, non-standard JSON -------------------------------------------------


@pytest.mark.parametrize(
    "raw_value",
    ["1e400", "-1e400", "NaN", "Infinity"],
)
def test_non_finite_learning_rate_is_a_400(http_a: httpx.Client, train_file: str, raw_value: str) -> None:
    content = (
        f'{{"model": "{BASE}", "training_file": "{train_file}", "hyperparameters": {{"learning_rate_multiplier": {raw_value}}}}}'
    )
    resp = http_a.post("/v1/fine_tuning/jobs", content=content, headers={"content-type": "application/json"})
    err = error_of(resp, 400, "hyperparameters.learning_rate_multiplier")
    assert "finite number" in err["message"], err


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b'{"messages": [], "x": NaN}\n', "NaN"),
        (b'{"messages": [], "x": -Infinity}\n', "Infinity"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}\n', "surrogate"),
    ],
)
def test_non_standard_json_in_a_training_file_names_the_line(http_a: httpx.Client, line: bytes, says: str) -> None:
    resp = http_a.post("/v1/files", files={"file": ("bad.jsonl", GOOD_BYTES + line)}, data={"purpose": "fine-tune"})
    err = error_of(resp, 400, "file")
    assert "line 2" in err["message"] and says in err["message"], err


def test_a_surrogate_pair_is_fine(http_a: httpx.Client) -> None:
    line = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}, {"role": "assistant", "content": "ok"}]}\n'
    resp = http_a.post("/v1/files", files={"file": ("emoji.jsonl", line)}, data={"purpose": "fine-tune"})
    assert resp.status_code == 200, resp.text


# --- 4. over-long multipart filename ----------------------------------------------------------


@pytest.mark.parametrize("length", [513, 4000])
def test_over_long_multipart_filename_is_a_400(http_a: httpx.Client, length: int) -> None:
    before = file_count(http_a)
    name = "n" * (length - 6) + ".jsonl"
    resp = http_a.post("/v1/files", files={"file": (name, GOOD_BYTES)}, data={"purpose": "fine-tune"})
    err = error_of(resp, 400, "file")
    assert "512" in err["message"], err
    assert file_count(http_a) == before


def test_a_512_character_filename_is_kept_whole(http_a: httpx.Client) -> None:
    name = "n" * 506 + ".jsonl"
    resp = http_a.post("/v1/files", files={"file": (name, GOOD_BYTES)}, data={"purpose": "fine-tune"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["filename"] == name


# --- 9. 405s and integer fields ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [("/v1/files/file-abc", {"GET", "DELETE"}), ("/v1/models/some-model", {"GET", "DELETE"})],
)
def test_405_lists_every_method_of_the_path(http_a: httpx.Client, path: str, allowed: set[str]) -> None:
    resp = http_a.put(path)
    error_of(resp, 405)
    assert allowed <= {m.strip() for m in resp.headers["allow"].split(",")}, resp.headers
    assert "PUT" not in resp.headers["allow"]


def test_n_epochs_as_a_float_names_both_options(http_a: httpx.Client, train_file: str) -> None:
    body = {"model": BASE, "training_file": train_file, "hyperparameters": {"n_epochs": 3.0}}
    err = error_of(http_a.post("/v1/fine_tuning/jobs", json=body), 400, "hyperparameters.n_epochs")
    assert "'auto'" in err["message"] and "integer" in err["message"], err


def test_seed_as_a_float_is_refused(http_a: httpx.Client, train_file: str) -> None:
    body = {"model": BASE, "training_file": train_file, "seed": 5.0}
    err = error_of(http_a.post("/v1/fine_tuning/jobs", json=body), 400, "seed")
    assert "integer" in err["message"], err


@pytest.mark.parametrize(("field", "value"), [("bytes", False), ("bytes", "10"), ("filename", 5)])
def test_upload_fields_are_strictly_typed(http_a: httpx.Client, field: str, value: Any) -> None:
    # Found by schemathesis: `"bytes": false` was read as 0 and created an Upload.
    upload = {"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl", field: value}
    error_of(http_a.post("/v1/uploads", json=upload), 400, field)
