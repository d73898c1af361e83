"""The object store: the same assertions against both backends (a local directory and S3 on
a real moto server), the local store's refusal of keys that escape it, and a `tailor serve`
whose files live in S3."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
from conftest import running_server

from service.core.storage import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    open_store,
)

MB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that do not repeat within a chunk (so misordered chunks show)."""
    block = b"".join((seed * 1_000_003 + i).to_bytes(8, "little") for i in range(8192))  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def s3_client(s3_endpoint: tuple[str, str]) -> Iterator[Any]:
    endpoint, _ = s3_endpoint
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        opened = open_store((tmp_path / "objects").as_uri())
        assert isinstance(opened, LocalObjectStore)
        yield opened
        return
    endpoint, bucket = request.getfixturevalue("s3_endpoint")
    opened = open_store(f"s3://{bucket}/unit-{uuid.uuid4().hex}", s3_endpoint_url=endpoint)
    assert isinstance(opened, S3ObjectStore)
    try:
        yield opened
    finally:
        for key in opened.list_keys(""):
            opened.delete(key)
        opened.client.close()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- the shared contract ---------------------------------------------------------------


def test_put_file_then_read_back(store: ObjectStore, tmp_path: Path) -> None:
    data = payload(3 * MB + 12345)
    store.put_file("files/proj_1/file-abc", write(tmp_path, "src", data))
    assert store.exists("files/proj_1/file-abc")
    assert store.get_bytes("files/proj_1/file-abc") == data

    chunks = list(store.iter_chunks("files/proj_1/file-abc", chunk_size=MB))
    assert len(chunks) >= 4
    assert all(0 < len(c) <= MB for c in chunks)
    assert b"".join(chunks) == data


def test_put_file_replaces(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file("k/obj", write(tmp_path, "one", b"first version, longer than the second"))
    store.put_file("k/obj", write(tmp_path, "two", b"second"))
    assert store.get_bytes("k/obj") == b"second"
    assert store.list_keys("k/") == ["k/obj"]


def test_put_bytes_and_empty_objects(store: ObjectStore) -> None:
    store.put_bytes("a/b/c.json", b'{"x": 1}')
    assert store.get_bytes("a/b/c.json") == b'{"x": 1}'
    store.put_bytes("a/empty", b"")
    assert store.exists("a/empty")
    assert store.get_bytes("a/empty") == b""


def test_missing_key(store: ObjectStore, tmp_path: Path) -> None:
    assert not store.exists("nope/missing")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope/missing")
    with pytest.raises(ObjectNotFound):
        list(store.iter_chunks("nope/missing"))
    with pytest.raises(KeyError):  # ObjectNotFound is a KeyError
        store.get_bytes("nope/missing")
    store.delete("nope/missing")  # absent is not an error
    store.delete_prefix("nope/")
    assert store.list_keys("nope/") == []


def test_download(store: ObjectStore, tmp_path: Path) -> None:
    data = payload(2 * MB + 7, seed=3)
    store.put_file("adapters/x/final/adapter_model.safetensors", write(tmp_path, "src", data))
    target = tmp_path / "out" / "deep" / "adapter_model.safetensors"
    store.download("adapters/x/final/adapter_model.safetensors", target)
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["adapter_model.safetensors"]


def test_download_of_a_missing_key_leaves_nothing_behind(store: ObjectStore, tmp_path: Path) -> None:
    target = tmp_path / "out" / "missing.bin"
    with pytest.raises(ObjectNotFound):
        store.download("nope/missing.bin", target)
    assert not target.exists()
    leftovers = sorted(p.name for p in target.parent.iterdir()) if target.parent.exists() else []
    assert leftovers == [], f"a failed download left {leftovers} in {target.parent}"


def test_delete(store: ObjectStore) -> None:
    store.put_bytes("d/one", b"1")
    store.put_bytes("d/two", b"2")
    store.delete("d/one")
    assert not store.exists("d/one")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("d/one")
    assert store.get_bytes("d/two") == b"2"
    assert store.list_keys("d/") == ["d/two"]


def test_delete_prefix(store: ObjectStore) -> None:
    for key in (
        "uploads/u1/part_a",
        "uploads/u1/part_b",
        "uploads/u1/nested/part_c",
        "uploads/u2/part_a",
        "uploads/u10/part_a",
        "files/p/f",
    ):
        store.put_bytes(key, key.encode())
    store.delete_prefix("uploads/u1/")
    assert store.list_keys("uploads/") == ["uploads/u10/part_a", "uploads/u2/part_a"]
    assert store.get_bytes("files/p/f") == b"files/p/f"


def test_delete_prefix_without_slash_is_one_folder(store: ObjectStore) -> None:
    """Deleting checkpoint `ckpt-step-1` (models/service.py passes the key with no trailing
    slash) must not take `ckpt-step-10` with it."""
    for key in (
        "adapters/j/ckpt-step-1/adapter_model.safetensors",
        "adapters/j/ckpt-step-1/adapter_config.json",
        "adapters/j/ckpt-step-10/adapter_model.safetensors",
        "adapters/j/ckpt-step-100/adapter_config.json",
    ):
        store.put_bytes(key, b"w")
    store.delete_prefix("adapters/j/ckpt-step-1")
    assert store.list_keys("adapters/j/") == [
        "adapters/j/ckpt-step-10/adapter_model.safetensors",
        "adapters/j/ckpt-step-100/adapter_config.json",
    ]


def test_list_keys(store: ObjectStore) -> None:
    for key in ("m/b", "m/a", "m/sub/c", "mx/d", "n/e"):
        store.put_bytes(key, b".")
    assert store.list_keys("m/") == ["m/a", "m/b", "m/sub/c"]
    assert store.list_keys("m/sub/") == ["m/sub/c"]
    assert store.list_keys("m") == ["m/a", "m/b", "m/sub/c", "mx/d"]
    assert store.list_keys("zzz/") == []


def test_put_dir_and_download_prefix(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text(json.dumps({"r": 16}))
    (src / "adapter_model.safetensors").write_bytes(payload(MB + 3, seed=9))
    (src / "sub" / "extra.txt").write_text("extra")
    store.put_dir("adapters/p/j/final/", src)
    assert store.list_keys("adapters/p/j/final/") == [
        "adapters/p/j/final/adapter_config.json",
        "adapters/p/j/final/adapter_model.safetensors",
        "adapters/p/j/final/sub/extra.txt",
    ]
    dest = tmp_path / "fetched"
    assert store.download_prefix("adapters/p/j/final", dest) == 3
    for rel in ("adapter_config.json", "adapter_model.safetensors", "sub/extra.txt"):
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()


# --- backend specifics -----------------------------------------------------------------


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd", "", "."])
def test_local_store_refuses_keys_that_escape(tmp_path: Path, key: str) -> None:
    local = LocalObjectStore(tmp_path / "root")
    src = write(tmp_path, "src", b"secret")
    with pytest.raises(ValueError, match="escapes"):
        local.put_file(key, src)
    with pytest.raises(ValueError, match="escapes"):
        local.get_bytes(key)
    with pytest.raises(ValueError, match="escapes"):
        local.exists(key)
    with pytest.raises(ValueError, match="escapes"):
        local.delete(key)
    assert not (tmp_path / "outside").exists()
    assert src.read_bytes() == b"secret"


def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    local = LocalObjectStore(tmp_path / "root")
    local.put_file("f/x", write(tmp_path, "src", payload(MB)))
    assert sorted(p.name for p in (tmp_path / "root" / "f").iterdir()) == ["x"]


def test_local_store_lives_where_the_url_says(tmp_path: Path) -> None:
    root = tmp_path / "with space"
    opened = open_store(root.as_uri())
    opened.put_bytes("k", b"v")
    assert (root / "k").read_bytes() == b"v"


def test_s3_store_writes_under_its_prefix(s3_endpoint: tuple[str, str], s3_client: Any) -> None:
    endpoint, bucket = s3_endpoint
    prefix = f"pfx-{uuid.uuid4().hex}"
    s3 = open_store(f"s3://{bucket}/{prefix}/", s3_endpoint_url=endpoint)
    try:
        s3.put_bytes("files/p/file-1", b"hello")
        got = s3_client.get_object(Bucket=bucket, Key=f"{prefix}/files/p/file-1")
        with got["Body"] as body:
            assert body.read() == b"hello"
        assert s3.list_keys("files/") == ["files/p/file-1"]
        s3.delete_prefix("files/")
        assert s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("KeyCount", 0) == 0
    finally:
        s3.client.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", ["ftp://host/x", "s3:///no-bucket", "gs://bucket/x"])
def test_open_store_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


# --- a server whose files live in S3 ---------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(
    server_env: dict[str, str], s3_endpoint: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, str, str]]:
    """`tailor serve` with TAILOR_STORAGE_URL=s3://bucket/tailor-test-…; yields it, a key and the prefix."""
    endpoint, bucket = s3_endpoint
    prefix = f"tailor-test-{uuid.uuid4().hex[:8]}"
    env = {**server_env, "TAILOR_STORAGE_URL": f"s3://{bucket}/{prefix}", "TAILOR_S3_ENDPOINT_URL": endpoint}
    with running_server(env, tmp_path_factory.mktemp("s3-server")) as s3srv:
        assert s3srv.env["AWS_ACCESS_KEY_ID"]  # moto's test credentials reach the server
        yield s3srv, s3srv.create_key(f"s3-{uuid.uuid4().hex[:8]}"), prefix


def bucket_keys(s3_client: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_server_keeps_files_in_s3(s3_server: tuple[Any, str, str], s3_endpoint: tuple[str, str], s3_client: Any) -> None:
    srv, key, prefix = s3_server
    _, bucket = s3_endpoint
    data = b"".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}).encode() + b"\n" for i in range(50))
    with openai.OpenAI(api_key=key, base_url=srv.base_url, max_retries=0) as client:
        created = client.files.create(file=("s3.jsonl", data), purpose="fine-tune")
        assert created.bytes == len(data)
        keys = [k for k in bucket_keys(s3_client, bucket, f"{prefix}/files/") if k.endswith("/" + created.id)]
        assert len(keys) == 1, bucket_keys(s3_client, bucket, prefix + "/")
        obj = s3_client.get_object(Bucket=bucket, Key=keys[0])
        with obj["Body"] as body:
            assert body.read() == data

        assert client.files.content(created.id).content == data
        assert client.files.retrieve(created.id).bytes == len(data)

        assert client.files.delete(created.id).deleted is True
        assert [k for k in bucket_keys(s3_client, bucket, f"{prefix}/files/") if k.endswith("/" + created.id)] == []
        with pytest.raises(openai.NotFoundError):
            client.files.content(created.id)


def test_server_uploads_through_s3(s3_server: tuple[Any, str, str], s3_endpoint: tuple[str, str], s3_client: Any) -> None:
    srv, key, prefix = s3_server
    _, bucket = s3_endpoint
    parts = [
        b"".join(json.dumps({"prompt": f"{tag}{i}", "completion": "c"}).encode() + b"\n" for i in range(20))
        for tag in ("x", "y", "z")
    ]
    with openai.OpenAI(api_key=key, base_url=srv.base_url, max_retries=0) as client:
        up = client.uploads.create(
            bytes=sum(map(len, parts)), filename="s3up.jsonl", mime_type="application/jsonl", purpose="fine-tune"
        )
        ids = [client.uploads.parts.create(upload_id=up.id, data=p).id for p in parts]
        assert len(bucket_keys(s3_client, bucket, f"{prefix}/uploads/{up.id}/")) == 3
        done = client.uploads.complete(upload_id=up.id, part_ids=[ids[1], ids[2], ids[0]])
        assert done.status == "completed" and done.file is not None
        assert client.files.content(done.file.id).content == parts[1] + parts[2] + parts[0]
        # The parts are gone once the file is assembled.
        assert bucket_keys(s3_client, bucket, f"{prefix}/uploads/{up.id}/") == []
        client.files.delete(done.file.id)


# --- what the janitor reads and removes --------------------------------------------------------


def test_list_dated_gives_each_key_its_time(store: ObjectStore, tmp_path: Path) -> None:
    before = time.time() - 5
    store.put_bytes("j/a", b"1")
    store.put_bytes("j/b", b"2")
    dated = store.list_dated("j/")
    assert [key for key, _ in dated] == ["j/a", "j/b"] == store.list_keys("j/")
    assert all(before < modified < before + 600 for _, modified in dated), dated


def test_remove_partials_spares_the_young(store: ObjectStore) -> None:
    if isinstance(store, LocalObjectStore):
        (store.root / "files").mkdir(parents=True)
        (store.root / "files" / ".incoming-x").write_bytes(b"half")
        assert store.remove_partials(older_than=time.time() - 3600) == 0, "a partial younger than the bound stays"
    else:
        # moto reports one fixed `Initiated` time (in 2010) for every multipart upload, so
        # only the removal is checked here; real S3 dates them.
        assert isinstance(store, S3ObjectStore)
        store.client.create_multipart_upload(Bucket=store.bucket, Key=store._key("files/big"))
    assert store.remove_partials(older_than=time.time() + 5) == 1
    assert store.remove_partials(older_than=time.time() + 5) == 0
    assert store.list_keys("") == []
