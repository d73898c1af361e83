"""The Uploads API against a real `tailor serve`: a file sent in parts through the `openai`
SDK (`uploads.upload_file_chunked`) and raw HTTP, assembled in the order the caller names,
with its MD5 and byte-count checks, cancel, project isolation and the JSONL check."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import openai
import pytest
from conftest import running_server
from spec import assert_error_envelope, validate

UPLOADS = "/v1/uploads"


def jsonl(n: int, tag: str = "") -> bytes:
    return b"".join(
        json.dumps({"messages": [{"role": "user", "content": f"{tag} q{i}"}, {"role": "assistant", "content": f"a{i}"}]}).encode()
        + b"\n"
        for i in range(n)
    )


# --- helpers ---------------------------------------------------------------------------


def error_of(resp: httpx.Response, status: int, *, param: Any = ...) -> dict[str, Any]:
    err = assert_error_envelope(resp, status)
    assert resp.headers.get("x-request-id")
    assert set(err) == {"message", "type", "param", "code"}, err
    if param is not ...:
        assert err["param"] == param, err
    return err


def upload_json(resp: httpx.Response, status: str) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("x-request-id")
    body = resp.json()
    validate(body, "Upload")
    assert body["object"] == "upload"
    assert body["status"] == status, body
    return body


def create(http: httpx.Client, size: int, **extra: Any) -> dict[str, Any]:
    body = {"filename": "train.jsonl", "purpose": "fine-tune", "bytes": size, "mime_type": "application/jsonl"}
    return upload_json(http.post(UPLOADS, json={**body, **extra}), "pending")


def add_part(http: httpx.Client, upload_id: str, data: bytes) -> dict[str, Any]:
    resp = http.post(f"{UPLOADS}/{upload_id}/parts", files={"data": ("blob", data)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    validate(body, "UploadPart")
    assert body["object"] == "upload.part"
    assert body["upload_id"] == upload_id
    assert body["id"].startswith("part_")
    return body


def complete(http: httpx.Client, upload_id: str, part_ids: list[str], **extra: Any) -> httpx.Response:
    return http.post(f"{UPLOADS}/{upload_id}/complete", json={"part_ids": part_ids, **extra})


def content_of(http: httpx.Client, file_id: str) -> bytes:
    resp = http.get(f"/v1/files/{file_id}/content")
    assert resp.status_code == 200, resp.text
    return resp.content


def objects_root(server: Any) -> Path | None:
    url = server.env.get("TAILOR_STORAGE_URL")
    if url:
        parsed = urlparse(url)
        return Path(unquote(parsed.path)) if parsed.scheme == "file" else None
    return (Path(server.env.get("TAILOR_DATA_DIR", ".tailor")) / "objects").resolve()


def stored_parts(server: Any, upload_id: str) -> list[Path] | None:
    root = objects_root(server)
    if root is None:
        return None
    folder = root / "uploads" / upload_id
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def fresh(server: Any) -> Iterator[tuple[httpx.Client, openai.OpenAI]]:
    """Raw and SDK clients for a project of its own (so its file list starts empty)."""
    key = server.create_key(f"uploads-{uuid.uuid4().hex[:12]}")
    with httpx.Client(base_url=server.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        client = openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)
        try:
            yield http, client
        finally:
            client.close()


# --- the SDK's chunked upload ----------------------------------------------------------


def test_sdk_upload_file_chunked_from_bytes(client_a: openai.OpenAI) -> None:
    data = jsonl(40, "chunked")
    assert len(data) > 1000
    done = client_a.uploads.upload_file_chunked(
        file=data,
        filename="chunked.jsonl",
        bytes=len(data),
        mime_type="application/jsonl",
        purpose="fine-tune",
        part_size=300,
    )
    assert done.status == "completed"
    assert done.file is not None
    assert done.file.bytes == len(data) and done.file.filename == "chunked.jsonl"
    assert done.file.purpose == "fine-tune"
    assert client_a.files.content(done.file.id).content == data
    assert client_a.files.retrieve(done.file.id).bytes == len(data)


def test_sdk_upload_file_chunked_from_path_with_md5(server: Any, client_a: openai.OpenAI, tmp_path: Path) -> None:
    data = jsonl(25, "from-path")
    path = tmp_path / "from-path.jsonl"
    path.write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    done = client_a.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=512, md5=md5
    )
    assert done.status == "completed" and done.file is not None
    assert done.file.filename == "from-path.jsonl"
    assert client_a.files.content(done.file.id).content == data
    # The parts are dropped once the file is assembled.
    assert stored_parts(server, done.id) in (None, [])


# --- the raw flow ----------------------------------------------------------------------


def test_parts_are_joined_in_the_order_given(server: Any, fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = fresh
    chunks = [jsonl(3, "first"), jsonl(5, "second"), jsonl(2, "third")]
    before = int(time.time())
    up = create(http, sum(map(len, chunks)))
    assert up["id"].startswith("upload_")
    assert up["bytes"] == sum(map(len, chunks))
    assert up["filename"] == "train.jsonl" and up["purpose"] == "fine-tune"
    assert before - 1 <= up["created_at"] <= int(time.time()) + 1
    assert up["expires_at"] > up["created_at"]
    assert up.get("file") is None

    parts = [add_part(http, up["id"], c) for c in chunks]
    assert len({p["id"] for p in parts}) == 3
    if (on_disk := stored_parts(server, up["id"])) is not None:
        assert len(on_disk) == 3

    order = [2, 0, 1]
    done = upload_json(complete(http, up["id"], [parts[i]["id"] for i in order]), "completed")
    assert done["id"] == up["id"]
    file = done["file"]
    validate(file, "OpenAIFile")
    assert file["id"].startswith("file-")
    assert file["bytes"] == up["bytes"]
    assert file["filename"] == "train.jsonl" and file["purpose"] == "fine-tune"
    assert content_of(http, file["id"]) == b"".join(chunks[i] for i in order)
    listed = http.get("/v1/files").json()
    assert [f["id"] for f in listed["data"]] == [file["id"]]
    assert stored_parts(server, up["id"]) in (None, [])


def test_sdk_raw_calls(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    _, client = fresh
    a, b = jsonl(2, "a"), jsonl(3, "b")
    up = client.uploads.create(bytes=len(a + b), filename="sdk.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    assert up.status == "pending"
    pa = client.uploads.parts.create(upload_id=up.id, data=a)
    pb = client.uploads.parts.create(upload_id=up.id, data=b)
    assert pa.upload_id == up.id and pb.upload_id == up.id
    done = client.uploads.complete(upload_id=up.id, part_ids=[pb.id, pa.id])
    assert done.status == "completed" and done.file is not None
    assert client.files.content(done.file.id).content == b + a


def test_md5_is_checked(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = fresh
    chunks = [jsonl(2, "x"), jsonl(2, "y")]
    whole = b"".join(chunks)
    up = create(http, len(whole))
    ids = [add_part(http, up["id"], c)["id"] for c in chunks]

    wrong = hashlib.md5(b"something else").hexdigest()
    err = error_of(complete(http, up["id"], ids, md5=wrong), 400, param="md5")
    assert hashlib.md5(whole).hexdigest() in err["message"] and wrong in err["message"]
    # A reversed order has another MD5 too.
    error_of(complete(http, up["id"], ids[::-1], md5=hashlib.md5(whole).hexdigest()), 400, param="md5")
    assert http.get("/v1/files").json()["data"] == []

    # The upload is still pending: the right MD5 (any case) completes it.
    done = upload_json(complete(http, up["id"], ids, md5=hashlib.md5(whole).hexdigest().upper()), "completed")
    assert content_of(http, done["file"]["id"]) == whole


def test_byte_count_must_match(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = fresh
    a, b = jsonl(2, "a"), jsonl(2, "b")
    up = create(http, len(a) + len(b) + 1)
    ids = [add_part(http, up["id"], a)["id"], add_part(http, up["id"], b)["id"]]
    err = error_of(complete(http, up["id"], ids), 400)
    assert str(len(a) + len(b)) in err["message"] and str(len(a) + len(b) + 1) in err["message"]
    # Leaving a part out does not add up either.
    error_of(complete(http, up["id"], ids[:1]), 400)
    assert http.get("/v1/files").json()["data"] == []


def test_part_ids_must_belong_to_the_upload(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = fresh
    data = jsonl(2)
    up = create(http, len(data))
    other = create(http, len(data))
    mine = add_part(http, up["id"], data)["id"]
    theirs = add_part(http, other["id"], data)["id"]

    err = error_of(complete(http, up["id"], ["part_doesnotexist"]), 400, param="part_ids")
    assert "part_doesnotexist" in err["message"]
    err = error_of(complete(http, up["id"], [theirs]), 400, param="part_ids")
    assert theirs in err["message"]
    error_of(complete(http, up["id"], [mine, mine]), 400, param="part_ids")
    error_of(complete(http, up["id"], []), 400, param="part_ids")
    # Neither upload was harmed.
    assert upload_json(complete(http, up["id"], [mine]), "completed")["file"]["bytes"] == len(data)
    assert upload_json(complete(http, other["id"], [theirs]), "completed")["file"]["bytes"] == len(data)


def test_complete_twice(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, client = fresh
    data = jsonl(3)
    up = create(http, len(data))
    part = add_part(http, up["id"], data)["id"]
    upload_json(complete(http, up["id"], [part]), "completed")
    err = error_of(complete(http, up["id"], [part]), 400)
    assert "completed" in err["message"]
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload_id=up["id"], part_ids=[part])
    # A completed upload takes no more parts and cannot be cancelled.
    error_of(http.post(f"{UPLOADS}/{up['id']}/parts", files={"data": ("blob", data)}), 400)
    error_of(http.post(f"{UPLOADS}/{up['id']}/cancel"), 400)
    assert len(http.get("/v1/files").json()["data"]) == 1


def test_concurrent_completions_make_one_file(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = fresh
    chunks = [jsonl(200, "race-a"), jsonl(200, "race-b")]
    up = create(http, sum(map(len, chunks)))
    ids = [add_part(http, up["id"], c)["id"] for c in chunks]
    barrier = threading.Barrier(4)

    def attempt(_: int) -> httpx.Response:
        barrier.wait()
        return complete(http, up["id"], ids)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, range(4)))
    ok = [r for r in results if r.status_code == 200]
    assert len(ok) == 1, [(r.status_code, r.text) for r in results]
    for r in results:
        if r.status_code != 200:
            error_of(r, 400)
    file_id = upload_json(ok[0], "completed")["file"]["id"]
    assert [f["id"] for f in http.get("/v1/files").json()["data"]] == [file_id]
    assert content_of(http, file_id) == b"".join(chunks)


def test_cancel(server: Any, fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, client = fresh
    data = jsonl(3)
    up = create(http, len(data))
    part = add_part(http, up["id"], data)["id"]

    raw = client.uploads.with_raw_response.cancel(up["id"])
    body = raw.http_response.json()
    validate(body, "Upload")
    assert body["status"] == "cancelled" and body["id"] == up["id"]
    assert raw.parse().status == "cancelled"
    assert stored_parts(server, up["id"]) in (None, [])

    err = error_of(http.post(f"{UPLOADS}/{up['id']}/parts", files={"data": ("blob", data)}), 400)
    assert "cancelled" in err["message"]
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload_id=up["id"], data=data)
    error_of(complete(http, up["id"], [part]), 400)
    error_of(http.post(f"{UPLOADS}/{up['id']}/cancel"), 400)
    assert http.get("/v1/files").json()["data"] == []


def test_other_projects_cannot_see_an_upload(
    client_a: openai.OpenAI, client_b: openai.OpenAI, http_a: httpx.Client, key_b: str, server: Any
) -> None:
    data = jsonl(2, "private")
    up = create(http_a, len(data))
    part = add_part(http_a, up["id"], data)["id"]

    with httpx.Client(base_url=server.root_url, headers={"Authorization": f"Bearer {key_b}"}, timeout=60) as http_b:
        error_of(http_b.post(f"{UPLOADS}/{up['id']}/parts", files={"data": ("blob", data)}), 404)
        error_of(complete(http_b, up["id"], [part]), 404)
        error_of(http_b.post(f"{UPLOADS}/{up['id']}/cancel"), 404)
    with pytest.raises(openai.NotFoundError):
        client_b.uploads.cancel(up["id"])
    with pytest.raises(openai.NotFoundError):
        client_b.uploads.complete(upload_id=up["id"], part_ids=[part])

    # Untouched for its owner.
    done = client_a.uploads.complete(upload_id=up["id"], part_ids=[part])
    assert done.status == "completed" and done.file is not None
    assert client_a.files.content(done.file.id).content == data


def test_unknown_upload_is_404(http_a: httpx.Client) -> None:
    missing = "upload_" + uuid.uuid4().hex
    for resp in (
        http_a.post(f"{UPLOADS}/{missing}/parts", files={"data": ("blob", b"{}\n")}),
        complete(http_a, missing, ["part_x"]),
        http_a.post(f"{UPLOADS}/{missing}/cancel"),
    ):
        assert missing in error_of(resp, 404)["message"]


def test_invalid_jsonl_across_parts_names_the_line(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = fresh
    good = jsonl(4)
    # Line 6 is broken, and it is split across the second and third parts.
    bad_line = b'{"messages": [{"role": "user", "content": "half"}\n'
    first, second = good + jsonl(1), bad_line[:20]
    third = bad_line[20:] + jsonl(1)
    up = create(http, len(first + second + third))
    ids = [add_part(http, up["id"], p)["id"] for p in (first, second, third)]
    err = error_of(complete(http, up["id"], ids), 400, param="file")
    assert "line 6" in err["message"], err
    assert err["code"] == "invalid_file_format"
    assert http.get("/v1/files").json()["data"] == []
    # The failed completion left the upload pending, so it can still be cancelled.
    upload_json(http.post(f"{UPLOADS}/{up['id']}/cancel"), "cancelled")


def test_non_jsonl_purposes_are_not_parsed(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = fresh
    data = bytes(range(256)) * 4
    up = upload_json(
        http.post(
            UPLOADS,
            json={"filename": "pic.bin", "purpose": "vision", "bytes": len(data), "mime_type": "application/octet-stream"},
        ),
        "pending",
    )
    ids = [add_part(http, up["id"], data[:500])["id"], add_part(http, up["id"], data[500:])["id"]]
    done = upload_json(complete(http, up["id"], ids), "completed")
    assert done["file"]["purpose"] == "vision"
    assert content_of(http, done["file"]["id"]) == data


def test_upload_expires_after_applies_to_the_file(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = fresh
    data = jsonl(2)
    up = create(http, len(data), expires_after={"anchor": "created_at", "seconds": 7200})
    part = add_part(http, up["id"], data)["id"]
    file = upload_json(complete(http, up["id"], [part]), "completed")["file"]
    assert file["expires_at"] == file["created_at"] + 7200


@pytest.mark.parametrize(
    "change,param",
    [
        ({"purpose": "user_data"}, "purpose"),
        ({"purpose": "fine-tuning"}, "purpose"),
        ({"bytes": -1}, "bytes"),
        ({"filename": ""}, "filename"),
        ({"mime_type": None}, "mime_type"),
        ({"expires_after": {"anchor": "created_at", "seconds": 10}}, "expires_after.seconds"),
    ],
)
def test_create_validation(http_a: httpx.Client, change: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "application/jsonl"}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    error_of(http_a.post(UPLOADS, json=body), 400, param=param)


def test_part_needs_a_data_file(fresh: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = fresh
    up = create(http, 10)
    error_of(http.post(f"{UPLOADS}/{up['id']}/parts", files={"other": ("blob", b"x")}), 400, param="data")
    error_of(http.post(f"{UPLOADS}/{up['id']}/parts", json={"data": "x"}), 400, param="data")


# --- limits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A second server with tiny Uploads limits: 100-byte parts, 1000 bytes in all."""
    data_dir = tmp_path_factory.mktemp("upload-limits")
    env = {**server_env, "TAILOR_MAX_UPLOAD_PART_BYTES": "100", "TAILOR_MAX_UPLOAD_TOTAL_BYTES": "1000"}
    with running_server(env, data_dir) as small:
        key = small.create_key("uploads-limits")
        with httpx.Client(base_url=small.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            yield http


def test_limits(limited: httpx.Client) -> None:
    err = error_of(
        limited.post(
            UPLOADS, json={"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 1001, "mime_type": "application/jsonl"}
        ),
        400,
        param="bytes",
    )
    assert "1000" in err["message"]
    up = create(limited, 150)
    big = limited.post(f"{UPLOADS}/{up['id']}/parts", files={"data": ("blob", b"{}" + b" " * 98 + b"\n")})
    err = error_of(big, 413, param="data")
    assert err["code"] == "file_too_large"
    line = b'{"k": "' + b"v" * 65 + b'"}\n'
    assert len(line) == 75
    ids = [add_part(limited, up["id"], line)["id"] for _ in range(2)]
    done = upload_json(complete(limited, up["id"], ids), "completed")
    assert content_of(limited, done["file"]["id"]) == line * 2


@pytest.fixture(scope="module")
def short_lived(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A second server whose Uploads expire 2 seconds after they are created."""
    data_dir = tmp_path_factory.mktemp("upload-expiry")
    with running_server({**server_env, "TAILOR_UPLOAD_EXPIRY_SECONDS": "2"}, data_dir) as srv:
        key = srv.create_key("uploads-expiry")
        with httpx.Client(base_url=srv.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            yield http


def test_expired_upload_takes_nothing(short_lived: httpx.Client) -> None:
    data = jsonl(2)
    up = create(short_lived, len(data))
    assert up["expires_at"] == up["created_at"] + 2
    part = add_part(short_lived, up["id"], data)["id"]
    time.sleep(3.2)
    for resp in (
        short_lived.post(f"{UPLOADS}/{up['id']}/parts", files={"data": ("blob", data)}),
        complete(short_lived, up["id"], [part]),
        short_lived.post(f"{UPLOADS}/{up['id']}/cancel"),
    ):
        assert "expired" in error_of(resp, 400)["message"]
    assert short_lived.get("/v1/files").json()["data"] == []
