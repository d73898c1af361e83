"""The Files API against a real `tailor serve`, through the official `openai` SDK and raw HTTP:
create (with the JSONL check of fine-tuning files), list and its pagination, retrieve,
content, delete, expiry, the size limit, project isolation and the error envelope."""

from __future__ import annotations

import email.message
import email.utils
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import httpx
import openai
import pytest
from conftest import running_server
from spec import assert_error_envelope, validate

FILES = "/v1/files"
LINES = [
    {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
    for i in range(8)
]
TRAIN_BYTES = "".join(json.dumps(line) + "\n" for line in LINES).encode()


# --- helpers ---------------------------------------------------------------------------


def jsonl_lines(n: int) -> list[bytes]:
    return [json.dumps(LINES[i % len(LINES)]).encode() + b"\n" for i in range(n)]


def jsonl_of_size(size: int) -> bytes:
    """Valid JSONL of exactly `size` bytes (one padded object per line)."""
    out = b""
    while size - len(out) > 120:
        out += json.dumps({"prompt": "p" * 40, "completion": "c" * 40}).encode() + b"\n"
    rest = size - len(out)
    filler = rest - len(b'{"pad": ""}\n')
    assert filler >= 0, size
    out += b'{"pad": "' + b"x" * filler + b'"}\n'
    assert len(out) == size
    return out


def error_of(resp: httpx.Response, status: int, *, param: Any = ..., code: Any = ...) -> dict[str, Any]:
    """Check a raw error response: status, the OpenAI envelope, a request id, param and code."""
    err = assert_error_envelope(resp, status)
    assert resp.headers.get("x-request-id"), resp.headers
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["type"] == "invalid_request_error", err
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    return err


def sdk_error(exc: openai.APIStatusError, status: int, *, param: Any = ...) -> str:
    """The message of an SDK error, after checking its status, envelope and request id."""
    assert exc.status_code == status, exc
    assert exc.response.headers.get("x-request-id")
    validate(exc.response.json(), "ErrorResponse")
    assert isinstance(exc.body, dict), exc.body
    if param is not ...:
        assert exc.param == param, exc.body
    return str(exc.body["message"])


def file_json(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("x-request-id")
    body = resp.json()
    validate(body, "OpenAIFile")
    assert body["object"] == "file"
    return body


def sdk_create(client: openai.OpenAI, data: bytes, name: str = "train.jsonl", **kwargs: Any) -> dict[str, Any]:
    """Upload through the SDK; return the JSON the server sent, checked against the spec."""
    kwargs.setdefault("purpose", "fine-tune")
    raw = client.files.with_raw_response.create(file=(name, data), **kwargs)
    assert raw.http_response.headers.get("x-request-id")
    body = raw.http_response.json()
    validate(body, "OpenAIFile")
    parsed = raw.parse()
    assert parsed.id == body["id"] and parsed.bytes == body["bytes"]
    return body


def objects_root(server: Any) -> Path | None:
    """The local object store directory the server writes to (None when it is not local)."""
    url = server.env.get("TAILOR_STORAGE_URL")
    if url:
        parsed = urlparse(url)
        return Path(unquote(parsed.path)) if parsed.scheme == "file" else None
    return (Path(server.env.get("TAILOR_DATA_DIR", ".tailor")) / "objects").resolve()


def stored_objects(root: Path, file_id: str) -> list[Path]:
    return list((root / "files").glob(f"*/{file_id}"))


@pytest.fixture
def fresh(server: Any) -> Iterator[openai.OpenAI]:
    """An SDK client for a project of its own, so lists hold only what the test made."""
    key = server.create_key(f"files-{uuid.uuid4().hex[:12]}")
    client = openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh_http(server: Any) -> Iterator[tuple[httpx.Client, openai.OpenAI]]:
    key = server.create_key(f"files-{uuid.uuid4().hex[:12]}")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.root_url, headers=headers, timeout=60) as http:
        client = openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)
        try:
            yield http, client
        finally:
            client.close()


# --- create, retrieve, content ---------------------------------------------------------


def test_create_retrieve_content(client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    before = int(time.time())
    body = sdk_create(client_a, TRAIN_BYTES, "train.jsonl")
    after = int(time.time())
    assert body["id"].startswith("file-")
    assert body["bytes"] == len(TRAIN_BYTES)
    assert body["filename"] == "train.jsonl"
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert before - 1 <= body["created_at"] <= after + 1
    assert "expires_at" not in body or body["expires_at"] is None

    got = file_json(http_a.get(f"{FILES}/{body['id']}"))
    assert got == body
    sdk_got = client_a.files.retrieve(body["id"])
    assert (sdk_got.id, sdk_got.bytes, sdk_got.filename, sdk_got.purpose) == (
        body["id"],
        len(TRAIN_BYTES),
        "train.jsonl",
        "fine-tune",
    )

    assert client_a.files.content(body["id"]).content == TRAIN_BYTES
    raw = http_a.get(f"{FILES}/{body['id']}/content")
    assert raw.status_code == 200
    assert raw.content == TRAIN_BYTES
    assert raw.headers["content-length"] == str(len(TRAIN_BYTES))
    assert raw.headers.get("x-request-id")


def test_any_bytes_are_kept_for_other_purposes(fresh: openai.OpenAI) -> None:
    data = bytes(range(256)) * 40 + b"\xff\xfe not json at all"
    body = sdk_create(fresh, data, "blob.bin", purpose="user_data")
    assert body["bytes"] == len(data) and body["purpose"] == "user_data"
    assert fresh.files.content(body["id"]).content == data


def test_blank_lines_and_crlf_are_accepted(fresh: openai.OpenAI) -> None:
    data = b"\r\n".join(line.rstrip(b"\n") for line in jsonl_lines(3)) + b"\r\n\r\n\n" + jsonl_lines(1)[0]
    body = sdk_create(fresh, data)
    assert body["bytes"] == len(data)
    assert fresh.files.content(body["id"]).content == data


def test_upload_from_an_open_file(fresh: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "from-disk.jsonl"
    path.write_bytes(TRAIN_BYTES * 3)
    with open(path, "rb") as f:
        created = fresh.files.create(file=f, purpose="fine-tune")
    assert created.filename == "from-disk.jsonl"
    assert created.bytes == len(TRAIN_BYTES) * 3
    assert fresh.files.content(created.id).content == TRAIN_BYTES * 3


def test_non_ascii_filename_round_trips(fresh: openai.OpenAI) -> None:
    name = "données-训练.jsonl"
    body = sdk_create(fresh, TRAIN_BYTES, name)
    assert body["filename"] == name
    assert fresh.files.retrieve(body["id"]).filename == name
    # The download must not fail because of the name (a header can only carry latin-1).
    raw = fresh.files.with_raw_response.content(body["id"])
    assert raw.http_response.content == TRAIN_BYTES
    disposition = raw.http_response.headers["content-disposition"]
    assert disposition.isascii(), disposition
    assert "filename*=UTF-8''" + quote(name, safe="") in disposition, disposition
    assert disposition_filename(disposition) == name, disposition


def disposition_filename(header: str) -> str:
    """The filename a client reads from a Content-Disposition value: RFC 6266 prefers the
    `filename*` (RFC 5987) form; the plain `filename` must still be one clean ASCII value."""
    msg = email.message.Message()
    msg["content-disposition"] = header
    params = msg.get_params(header="content-disposition")
    assert params and params[0] == ("attachment", ""), params
    plain = [v for k, v in params[1:] if k == "filename" and isinstance(v, str)]
    extended = [v for k, v in params[1:] if k == "filename" and isinstance(v, tuple)]
    assert len(plain) == 1 and plain[0].isascii(), params
    assert len(params) == 2 + len(extended) and len(extended) <= 1, params
    if extended:
        assert extended[0][0].lower() == "utf-8", extended
        return email.utils.collapse_rfc2231_value(extended[0])
    return plain[0]


def test_quotes_in_a_filename_do_not_break_the_header(server: Any, fresh: openai.OpenAI) -> None:
    # Sent raw: httpx would percent-encode the quotes of a multipart filename itself.
    name = 'say "hi"; filename=evil.sh.jsonl'
    escaped = name.replace('"', '\\"')
    multipart = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        + f'--b\r\nContent-Disposition: form-data; name="file"; filename="{escaped}"\r\n'.encode()
        + b"Content-Type: application/jsonl\r\n\r\n"
        + TRAIN_BYTES
        + b"\r\n--b--\r\n"
    )
    headers = {"Authorization": f"Bearer {fresh.api_key}"}
    with httpx.Client(base_url=server.root_url, headers=headers, timeout=30) as http:
        body = file_json(http.post(FILES, content=multipart, headers={"Content-Type": "multipart/form-data; boundary=b"}))
        stored = body["filename"]
        assert "evil.sh.jsonl" in stored
        resp = http.get(f"{FILES}/{body['id']}/content")
    assert resp.content == TRAIN_BYTES
    disposition = resp.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert disposition_filename(disposition) == stored, disposition


def test_filename_cannot_steer_where_bytes_are_stored(server: Any, fresh: openai.OpenAI) -> None:
    body = sdk_create(fresh, TRAIN_BYTES, "../../../escape.jsonl")
    assert fresh.files.content(body["id"]).content == TRAIN_BYTES
    root = objects_root(server)
    if root is not None:
        assert [p.read_bytes() for p in stored_objects(root, body["id"])] == [TRAIN_BYTES]
        assert not list(root.parent.rglob("escape.jsonl"))


def test_content_of_a_file_whose_bytes_vanished_is_an_error(server: Any, fresh: openai.OpenAI) -> None:
    """A row whose object is gone (removed behind Tailor's back) must answer an error
    envelope, not a 200 that breaks off mid-body."""
    root = objects_root(server)
    if root is None:
        pytest.skip("the session server's store is not a local directory")
    body = sdk_create(fresh, TRAIN_BYTES)
    (path,) = stored_objects(root, body["id"])
    path.unlink()
    headers = {"Authorization": f"Bearer {fresh.api_key}"}
    with httpx.Client(base_url=server.root_url, headers=headers, timeout=30) as http:
        with http.stream("GET", f"{FILES}/{body['id']}/content") as resp:
            try:
                resp.read()
                broke_off = False
            except httpx.RemoteProtocolError:
                broke_off = True
        assert not broke_off, f"answered {resp.status_code} {dict(resp.headers)} and then broke off the body"
        assert resp.status_code in (404, 500), (resp.status_code, resp.text)
        assert_error_envelope(resp, resp.status_code)


# --- list ------------------------------------------------------------------------------


def test_list_contains_new_file_and_filters_by_purpose(
    fresh_http: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, client = fresh_http
    tune = sdk_create(client, TRAIN_BYTES)
    blob = sdk_create(client, b"just some bytes", "notes.txt", purpose="user_data")
    batch = sdk_create(client, TRAIN_BYTES, "batch.jsonl", purpose="batch")

    resp = http.get(FILES)
    assert resp.status_code == 200 and resp.headers.get("x-request-id")
    listed = resp.json()
    validate(listed, "ListFilesResponse")
    assert listed["object"] == "list"
    assert [f["id"] for f in listed["data"]] == [batch["id"], blob["id"], tune["id"]]
    assert listed["first_id"] == batch["id"] and listed["last_id"] == tune["id"]
    assert listed["has_more"] is False
    for item in listed["data"]:
        validate(item, "OpenAIFile")
    assert {f["id"]: f for f in listed["data"]}[tune["id"]] == tune

    only = client.files.list(purpose="fine-tune")
    assert [f.id for f in only.data] == [tune["id"]]
    assert [f.id for f in client.files.list(purpose="user_data").data] == [blob["id"]]
    assert client.files.list(purpose="vision").data == []


def test_list_is_scoped_to_the_project(client_a: openai.OpenAI, client_b: openai.OpenAI) -> None:
    mine = client_a.files.create(file=("a.jsonl", TRAIN_BYTES), purpose="fine-tune")
    assert mine.id in {f.id for f in client_a.files.list(order="desc", limit=10000).data}
    assert mine.id not in {f.id for f in client_b.files.list(limit=10000).data}


def test_list_pagination_and_order(fresh_http: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, client = fresh_http
    ids = [sdk_create(client, TRAIN_BYTES, f"f{i}.jsonl")["id"] for i in range(5)]

    def page(**params: Any) -> dict[str, Any]:
        resp = http.get(FILES, params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        validate(body, "ListFilesResponse")
        return body

    first = page(limit=2)  # newest first by default
    assert [f["id"] for f in first["data"]] == [ids[4], ids[3]]
    assert first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (ids[4], ids[3])
    second = page(limit=2, after=first["last_id"])
    assert [f["id"] for f in second["data"]] == [ids[2], ids[1]]
    assert second["has_more"] is True
    third = page(limit=2, after=second["last_id"])
    assert [f["id"] for f in third["data"]] == [ids[0]]
    assert third["has_more"] is False
    exact = page(limit=5)
    assert [f["id"] for f in exact["data"]] == ids[::-1] and exact["has_more"] is False

    asc = page(limit=3, order="asc")
    assert [f["id"] for f in asc["data"]] == ids[:3] and asc["has_more"] is True
    asc2 = page(limit=3, order="asc", after=asc["last_id"])
    assert [f["id"] for f in asc2["data"]] == ids[3:] and asc2["has_more"] is False
    assert [f["id"] for f in page(order="desc")["data"]] == ids[::-1]

    # The SDK's auto-pagination follows `after` through every page.
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]


def test_list_rejects_bad_parameters(http_a: httpx.Client) -> None:
    error_of(http_a.get(FILES, params={"limit": 0}), 400, param="limit")
    error_of(http_a.get(FILES, params={"order": "sideways"}), 400, param="order")
    error_of(http_a.get(FILES, params={"after": "file-doesnotexist"}), 404, param="after")


def test_list_cursor_from_another_project_is_refused(
    client_a: openai.OpenAI, fresh_http: tuple[httpx.Client, openai.OpenAI]
) -> None:
    http, client = fresh_http
    sdk_create(client, TRAIN_BYTES)
    theirs = client_a.files.create(file=("a.jsonl", TRAIN_BYTES), purpose="fine-tune").id
    error_of(http.get(FILES, params={"after": theirs}), 404, param="after")


# --- delete ----------------------------------------------------------------------------


def test_delete_removes_row_and_bytes(server: Any, client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    body = sdk_create(client_a, TRAIN_BYTES)
    file_id = body["id"]
    root = objects_root(server)
    if root is not None:
        on_disk = stored_objects(root, file_id)
        assert len(on_disk) == 1, on_disk
        assert on_disk[0].read_bytes() == TRAIN_BYTES

    raw = client_a.files.with_raw_response.delete(file_id)
    assert raw.http_response.headers.get("x-request-id")
    deleted = raw.http_response.json()
    validate(deleted, "DeleteFileResponse")
    assert deleted == {"id": file_id, "object": "file", "deleted": True}

    with pytest.raises(openai.NotFoundError) as exc:
        client_a.files.retrieve(file_id)
    assert file_id in sdk_error(exc.value, 404)
    with pytest.raises(openai.NotFoundError):
        client_a.files.content(file_id)
    error_of(http_a.get(f"{FILES}/{file_id}"), 404)
    error_of(http_a.get(f"{FILES}/{file_id}/content"), 404)
    error_of(http_a.delete(f"{FILES}/{file_id}"), 404)
    assert file_id not in {f.id for f in client_a.files.list(limit=10000).data}
    if root is not None:
        assert stored_objects(root, file_id) == []


# --- the JSONL check of fine-tuning files ----------------------------------------------


BAD_JSONL = {
    "broken JSON on line 7": (b"".join(jsonl_lines(6)) + b'{"messages": [\n' + jsonl_lines(1)[0], "line 7"),
    "array on line 2": (jsonl_lines(1)[0] + b"[1, 2, 3]\n" + jsonl_lines(1)[0], "line 2"),
    "number on line 4": (b"".join(jsonl_lines(3)) + b"42\n", "line 4"),
    "string on line 1": (b'"hello"\n' + jsonl_lines(1)[0], "line 1"),
    "not UTF-8 on line 3": (b"".join(jsonl_lines(2)) + b'{"text": "\xff\xfe\xfa"}\n', "line 3"),
    "blank lines still count": (jsonl_lines(1)[0] + b"\n\n" + b"{oops}\n", "line 4"),
    "no trailing newline": (b"".join(jsonl_lines(2)) + b'{"a": 1', "line 3"),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_fine_tune_file_must_be_jsonl_of_objects(fresh: openai.OpenAI, case: str) -> None:
    data, where = BAD_JSONL[case]
    with pytest.raises(openai.BadRequestError) as exc:
        fresh.files.create(file=("bad.jsonl", data), purpose="fine-tune")
    message = sdk_error(exc.value, 400, param="file")
    assert where in message, message
    assert exc.value.code == "invalid_file_format"
    assert exc.value.type == "invalid_request_error"
    # Nothing was kept.
    assert fresh.files.list().data == []


@pytest.mark.parametrize("data", [b"", b"\n\n  \n"], ids=["empty", "only-blank-lines"])
def test_fine_tune_file_must_not_be_empty(fresh: openai.OpenAI, data: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        fresh.files.create(file=("empty.jsonl", data), purpose="fine-tune")
    message = sdk_error(exc.value, 400, param="file")
    assert "no lines" in message or "empty" in message, message
    assert fresh.files.list().data == []


@pytest.mark.parametrize("purpose", ["batch", "evals"])
def test_other_jsonl_purposes_are_checked_too(http_a: httpx.Client, purpose: str) -> None:
    resp = http_a.post(FILES, files={"file": ("x.jsonl", b"[]\n")}, data={"purpose": purpose})
    err = error_of(resp, 400, param="file")
    assert "line 1" in err["message"]


# --- request validation ----------------------------------------------------------------


def test_bad_purpose(client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client_a.files.create(file=("t.jsonl", TRAIN_BYTES), purpose="fine-tuning")  # type: ignore[arg-type]
    assert "fine-tuning" in sdk_error(exc.value, 400, param="purpose")
    error_of(http_a.post(FILES, files={"file": ("t.jsonl", TRAIN_BYTES)}), 400, param="purpose")
    error_of(http_a.post(FILES, files={"file": ("t.jsonl", TRAIN_BYTES)}, data={"purpose": ""}), 400, param="purpose")


def test_missing_file_field(http_a: httpx.Client) -> None:
    # multipart with only the purpose field
    resp = http_a.post(FILES, files={"purpose": (None, "fine-tune")})
    assert resp.request.headers["content-type"].startswith("multipart/form-data")
    err = error_of(resp, 400, param="file")
    assert "file" in err["message"]
    # `file` sent as a plain form field, not as a file
    error_of(http_a.post(FILES, files={"file": (None, "abc"), "purpose": (None, "fine-tune")}), 400, param="file")
    # a file under another name
    error_of(http_a.post(FILES, files={"upload": ("t.jsonl", TRAIN_BYTES)}, data={"purpose": "fine-tune"}), 400, param="file")
    # not multipart at all
    error_of(http_a.post(FILES, json={"file": "abc", "purpose": "fine-tune"}), 400, param="file")


def test_expires_after_sets_expires_at(client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    for seconds in (3600, 86400, 2592000):
        body = sdk_create(client_a, TRAIN_BYTES, expires_after={"anchor": "created_at", "seconds": seconds})
        assert body["expires_at"] == body["created_at"] + seconds
        assert file_json(http_a.get(f"{FILES}/{body['id']}"))["expires_at"] == body["created_at"] + seconds
        listed = {f.id: f for f in client_a.files.list(limit=10000).data}
        assert listed[body["id"]].expires_at == body["created_at"] + seconds


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"}, "seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "seconds"),
        ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"}, "anchor"),
        ({"expires_after[seconds]": "3600"}, "anchor"),
    ],
)
def test_expires_after_out_of_range(http_a: httpx.Client, fields: dict[str, str], param: str) -> None:
    resp = http_a.post(FILES, files={"file": ("t.jsonl", TRAIN_BYTES)}, data={"purpose": "fine-tune", **fields})
    err = error_of(resp, 400)
    assert err["param"] in (f"expires_after.{param}", f"expires_after[{param}]"), err


def test_expires_after_seconds_out_of_range_through_sdk(client_a: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client_a.files.create(
            file=("t.jsonl", TRAIN_BYTES), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 60}
        )
    sdk_error(exc.value, 400)
    assert exc.value.param in ("expires_after.seconds", "expires_after[seconds]")


# --- not found, isolation, auth, request ids -------------------------------------------


def test_unknown_file_is_404(client_a: openai.OpenAI, http_a: httpx.Client) -> None:
    missing = "file-" + uuid.uuid4().hex
    for resp in (
        http_a.get(f"{FILES}/{missing}"),
        http_a.get(f"{FILES}/{missing}/content"),
        http_a.delete(f"{FILES}/{missing}"),
    ):
        err = error_of(resp, 404)
        assert missing in err["message"], err
    with pytest.raises(openai.NotFoundError) as exc:
        client_a.files.retrieve(missing)
    assert missing in sdk_error(exc.value, 404)
    with pytest.raises(openai.NotFoundError):
        client_a.files.delete(missing)


def test_other_projects_cannot_touch_a_file(client_a: openai.OpenAI, client_b: openai.OpenAI) -> None:
    mine = client_a.files.create(file=("a.jsonl", TRAIN_BYTES), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client_b.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        client_b.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        client_b.files.delete(mine.id)
    # Still there for its owner.
    assert client_a.files.retrieve(mine.id).id == mine.id
    assert client_a.files.content(mine.id).content == TRAIN_BYTES


def test_files_need_an_api_key(server: Any) -> None:
    with httpx.Client(base_url=server.root_url, timeout=30) as anon:
        resp = anon.get(FILES)
        assert resp.status_code == 401 and resp.headers.get("x-request-id")
        validate(resp.json(), "ErrorResponse")
        resp = anon.post(
            FILES,
            files={"file": ("t.jsonl", TRAIN_BYTES)},
            data={"purpose": "fine-tune"},
            headers={"Authorization": "Bearer sk-tailor-not-a-real-key"},
        )
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"


def test_request_id_on_every_response(http_a: httpx.Client) -> None:
    created = file_json(http_a.post(FILES, files={"file": ("t.jsonl", TRAIN_BYTES)}, data={"purpose": "fine-tune"}))
    responses = [
        http_a.get(FILES),
        http_a.get(f"{FILES}/{created['id']}"),
        http_a.get(f"{FILES}/{created['id']}/content"),
        http_a.get(f"{FILES}/file-nope"),
        http_a.post(FILES, files={"purpose": (None, "fine-tune")}),
        http_a.get("/v1/no-such-route"),
        http_a.delete(f"{FILES}/{created['id']}"),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), ids
    assert len(set(ids)) == len(ids), ids
    echoed = http_a.get(FILES, headers={"x-request-id": "req_from_the_client_123"})
    assert echoed.headers["x-request-id"] == "req_from_the_client_123"


# --- the size limit --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limit_server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A second server (same database) that refuses files over 1000 bytes; yields it and a key."""
    data_dir = tmp_path_factory.mktemp("small-limit")
    with running_server({**server_env, "TAILOR_MAX_UPLOAD_BYTES": "1000"}, data_dir) as small:
        yield small, small.create_key("files-limit")


def test_size_limit(small_limit_server: tuple[Any, str]) -> None:
    small, key = small_limit_server
    with openai.OpenAI(api_key=key, base_url=small.base_url, max_retries=0) as client:
        ok = client.files.create(file=("ok.jsonl", jsonl_of_size(1000)), purpose="fine-tune")
        assert ok.bytes == 1000
        assert client.files.content(ok.id).content == jsonl_of_size(1000)

        for size in (1001, 2000):
            with pytest.raises(openai.APIStatusError) as exc:
                client.files.create(file=("big.jsonl", jsonl_of_size(size)), purpose="fine-tune")
            message = sdk_error(exc.value, 413, param="file")
            assert "1000" in message, message
            assert exc.value.code == "file_too_large"
        assert [f.id for f in client.files.list().data] == [ok.id]

    with httpx.Client(base_url=small.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        err = error_of(
            http.post(FILES, files={"file": ("big.bin", b"x" * 2000)}, data={"purpose": "user_data"}),
            413,
            param="file",
            code="file_too_large",
        )
        assert "1000" in err["message"]
        # Far over the limit: refused from the declared length alone.
        error_of(
            http.post(FILES, files={"file": ("huge.bin", b"x" * 300_000)}, data={"purpose": "user_data"}),
            413,
            param="file",
            code="file_too_large",
        )
