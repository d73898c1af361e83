"""Faults in what Tailor stands on (issue 15's findings 5 and 7), against a real `tailor serve`:
an object store that cannot be written answers 503 with `retry-after` and loses nothing."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pg_private
import pytest
import redis
from arq.constants import job_key_prefix
from conftest import TailorServer, _spawn, _wait_until, free_port, fresh_database_url, running_server, stop_process
from helpers_db import run_db
from spec import assert_error_envelope
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.cli.devservers import _redis_pings
from service.core.tables import File, Upload, UploadPart

LINE = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'


@pytest.fixture
def store_server(server_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[TailorServer, Path]]:
    store = (tmp_path / "objects").resolve()
    store.mkdir()
    with running_server({**server_env, "TAILOR_STORAGE_URL": store.as_uri()}, tmp_path / "data") as server:
        yield server, store


def break_store(store: Path) -> Path:
    """Make the store unusable even for root: its directory becomes a plain file."""
    kept = store.with_name("objects.kept")
    store.rename(kept)
    store.write_bytes(b"not a directory")
    return kept


def mend_store(store: Path, kept: Path) -> None:
    store.unlink()
    kept.rename(store)


def test_unwritable_store_answers_503_and_a_delete_keeps_the_row(store_server: tuple[TailorServer, Path]) -> None:
    server, store = store_server
    key = server.create_key("faults")
    with httpx.Client(base_url=server.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        kept_file = http.post("/v1/files", files={"file": ("a.jsonl", LINE)}, data={"purpose": "fine-tune"}).json()
        moved = break_store(store)
        try:
            created = http.post("/v1/files", files={"file": ("b.jsonl", LINE)}, data={"purpose": "fine-tune"})
            err = assert_error_envelope(created, 503)
            assert created.headers["retry-after"].isdigit(), created.headers
            assert "objects" not in err["message"], "the store's path stays in the log"
            deleted = http.delete(f"/v1/files/{kept_file['id']}")
            assert_error_envelope(deleted, 503)
            # The row is still there, so the delete can be retried once the store is back.
            assert [f["id"] for f in http.get("/v1/files").json()["data"]] == [kept_file["id"]]
        finally:
            mend_store(store, moved)
        assert http.get(f"/v1/files/{kept_file['id']}/content").content == LINE
        assert http.delete(f"/v1/files/{kept_file['id']}").json()["deleted"] is True
        assert http.get("/v1/files").json()["data"] == []
        assert [p for p in store.rglob("*") if p.is_file()] == [], "no bytes left behind"
    shutil.rmtree(store, ignore_errors=True)


# --- Redis away, then back ------------------------------------------------------------------


@contextmanager
def redis_on(port: int, workdir: Path) -> Iterator[None]:
    binary = shutil.which("redis-server")
    assert binary, "make setup installs redis-server"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = _spawn(cmd, workdir / "redis.log", cwd=workdir)
    try:
        _wait_until(lambda: _redis_pings(port), proc, "redis-server", workdir / "redis.log", timeout=20)
        yield
    finally:
        stop_process(proc)


def test_a_job_created_while_redis_is_away_is_queued_once_it_is_back(database_url: str, queue_name: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "TAILOR_DATABASE_URL": database_url,
        "TAILOR_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "TAILOR_QUEUE_NAME": f"{queue_name}:redis-away",
        "TAILOR_RECONCILE_INTERVAL_SECONDS": "0.5",
    }
    with running_server(env, tmp_path / "data") as server:
        key = server.create_key("redis-away")
        with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0) as client:
            train = client.files.create(file=("t.jsonl", LINE * 10), purpose="fine-tune")
            started = time.monotonic()
            job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=train.id)
            waited = time.monotonic() - started
            # Before: two connection retries a second apart. A refused connection now fails at once.
            assert waited < 1.5, f"job create waited {waited:.1f} s on a Redis that is away"
            assert job.status == "validating_files"
            with redis_on(port, tmp_path):
                client_redis = redis.Redis(port=port)
                try:
                    deadline = time.monotonic() + 15
                    while not client_redis.exists(job_key_prefix + job.id):
                        assert time.monotonic() < deadline, "the job was never enqueued after Redis came back"
                        time.sleep(0.2)
                    queued = client_redis.zrange(env["TAILOR_QUEUE_NAME"], 0, -1)
                    assert job.id.encode() in queued, queued
                finally:
                    client_redis.close()


# --- kill -9 mid-upload, then the janitor ------------------------------------------------------


def _post_big_file(url: str, key: str, data: bytes) -> None:
    try:
        httpx.post(
            f"{url}/v1/files",
            files={"file": ("big.jsonl", data)},
            data={"purpose": "fine-tune"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
    except httpx.HTTPError:
        pass  # the server was killed under it: that is the point


@pytest.fixture
def own_database_url(tmp_path: Path) -> Iterator[str]:
    """A database of this test's own: the janitor sweeps every project's expired uploads, and
    the session's database holds other tests' (the counts below would depend on the order)."""
    with fresh_database_url(tmp_path / "db") as url:
        yield url


def test_api_killed_mid_upload_then_the_janitor_leaves_nothing(
    own_database_url: str, queue_name: str, redis_url: str, tmp_path: Path
) -> None:
    store, scratch = (tmp_path / "objects").resolve(), (tmp_path / "tmp").resolve()
    store.mkdir()
    scratch.mkdir()
    env = {
        "TAILOR_DATABASE_URL": own_database_url,
        "TAILOR_REDIS_URL": redis_url,
        "TAILOR_QUEUE_NAME": queue_name,
        "TAILOR_STORAGE_URL": store.as_uri(),
        "TMPDIR": str(scratch),
    }
    with running_server(env, tmp_path / "data") as server:
        key = server.create_key("janitor")
        with httpx.Client(base_url=server.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            kept = http.post("/v1/files", files={"file": ("kept.jsonl", LINE)}, data={"purpose": "fine-tune"}).json()
            expiring = http.post("/v1/files", files={"file": ("old.jsonl", LINE)}, data={"purpose": "fine-tune"}).json()
            upload = {"filename": "u.jsonl", "purpose": "fine-tune", "bytes": len(LINE) * 2, "mime_type": "text/jsonl"}
            upload_id = http.post("/v1/uploads", json=upload).json()["id"]
            assert http.post(f"/v1/uploads/{upload_id}/parts", files={"data": ("p", LINE)}).status_code == 200
        # An hour on: the file and the upload have expired (set in the rows rather than waited for).
        run_db(own_database_url, lambda s: _expire(s, expiring["id"], upload_id))

        big = LINE * (60 * 1024 * 1024 // len(LINE))
        sender = threading.Thread(target=_post_big_file, args=(server.root_url, key, big))
        sender.start()
        deadline = time.monotonic() + 60
        while not list(scratch.glob("tailor-scratch-*")):
            assert time.monotonic() < deadline and sender.is_alive(), "the upload never reached its scratch file"
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        sender.join(30)
        server.proc.wait(10)
        assert list(scratch.glob("tailor-scratch-*")), "kill -9 leaves the scratch file behind"
        # What a kill between a store write and its row's commit leaves (too brief to hit by timing).
        orphan = store / "files" / "proj_gone" / "file-orphan"
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(LINE)
        partial = store / "files" / ".incoming-abc123"
        partial.write_bytes(LINE[:10])

        summary = server.cli("janitor", "--grace-seconds", "0").stdout.strip()
        assert summary == (
            "expired files: 1, expired uploads: 1, orphan objects: 1, partial objects: 1, scratch files: 1, "
            "expired idempotency keys: 0"
        ), summary
        assert not list(scratch.iterdir()), list(scratch.iterdir())
        left = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
        assert len(left) == 1 and left[0].endswith(kept["id"]), left
        assert "scratch files: 0," in server.cli("janitor", "--grace-seconds", "0").stdout

    # A restarted API still serves what was kept.
    with running_server(env, tmp_path / "data") as again:
        with httpx.Client(base_url=again.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            assert http.get(f"/v1/files/{kept['id']}/content").content == LINE
            assert [f["id"] for f in http.get("/v1/files").json()["data"]] == [kept["id"]]
    assert run_db(own_database_url, lambda s: _upload_state(s, upload_id)) == ("expired", 0)


def _tracebacks(server: TailorServer) -> str:
    lines = server.log_path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    return "\n".join("\n".join(lines[i : i + 60]) for i in starts[:2])


async def _upload_state(session: AsyncSession, upload_id: str) -> tuple[str, int]:
    upload = await session.get(Upload, upload_id)
    assert upload is not None
    parts = (await session.execute(select(func.count()).where(UploadPart.upload_id == upload_id))).scalar_one()
    return upload.status, parts


async def _expire(session: AsyncSession, file_id: str, upload_id: str) -> None:
    past = int(time.time()) - 1
    await session.execute(update(File).where(File.id == file_id).values(expires_at=past))
    await session.execute(update(Upload).where(Upload.id == upload_id).values(expires_at=past))
    await session.commit()


def test_the_api_sweeps_on_its_own(server_env: dict[str, str], own_database_url: str, tmp_path: Path) -> None:
    store = (tmp_path / "objects").resolve()
    orphan = store / "files" / "proj_gone" / "file-orphan"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(LINE)
    env = {
        **server_env,
        "TAILOR_DATABASE_URL": own_database_url,
        "TAILOR_STORAGE_URL": store.as_uri(),
        "TAILOR_JANITOR_INTERVAL_SECONDS": "0.5",
        "TAILOR_JANITOR_GRACE_SECONDS": "0",
    }
    with running_server(env, tmp_path / "data") as server:
        deadline = time.monotonic() + 20
        while orphan.exists():
            assert time.monotonic() < deadline, f"the API's janitor never ran:\n{server.log_tail()}"
            time.sleep(0.2)
        # The sweep logs its counts after its last delete: the line may trail the file's removal.
        swept = "janitor: expired files: 0, expired uploads: 0, orphan objects: 1"
        while swept not in server.log_tail(200):
            assert time.monotonic() < deadline, f"the janitor did not report its sweep:\n{server.log_tail(200)}"
            time.sleep(0.2)


# --- PostgreSQL restarted under traffic --------------------------------------------------------


def _traffic(url: str, key: str, stop: threading.Event, seen: list[tuple[str, int, dict[str, Any], str]]) -> None:
    """List and create files until told to stop, recording (what, status, body, retry-after)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                listed = http.get("/v1/files")
                seen.append(("list", listed.status_code, listed.json(), listed.headers.get("retry-after", "")))
                made = http.post("/v1/files", files={"file": (f"f{n}.jsonl", LINE)}, data={"purpose": "fine-tune"})
                seen.append(("create", made.status_code, made.json(), made.headers.get("retry-after", "")))
            except httpx.HTTPError as exc:
                seen.append(("transport", 0, {"error": repr(exc)}, ""))
            time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.skipif(not pg_private.available(), reason="PostgreSQL's server binaries are not installed")
def test_postgres_restarted_under_traffic_gives_brief_503s_and_loses_nothing(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    with pg_private.private_postgres() as pg:
        env = {"TAILOR_DATABASE_URL": pg.url, "TAILOR_REDIS_URL": redis_url, "TAILOR_QUEUE_NAME": f"{queue_name}:pg"}
        with running_server(env, tmp_path / "data") as server:
            key = server.create_key("pg-restart")
            stop, seen = threading.Event(), []
            sender = threading.Thread(target=_traffic, args=(server.root_url, key, stop, seen))
            sender.start()
            try:
                time.sleep(1.5)
                pg.stop()
                time.sleep(2)  # down: new connections are refused
                pg.start()
                healed_at = len(seen)
                deadline = time.monotonic() + 20
                while not any(s[1] == 200 and s[0] == "create" for s in seen[healed_at:]):
                    assert time.monotonic() < deadline, f"never recovered:\n{server.log_tail(30)}"
                    time.sleep(0.2)
                time.sleep(1)
            finally:
                stop.set()
                sender.join(30)
            statuses = sorted({s[1] for s in seen})
            assert 503 in statuses, f"the outage was never seen: {statuses}"
            assert set(statuses) <= {200, 503}, ([s for s in seen if s[1] not in (200, 503)][:5], _tracebacks(server))
            for what, status, body, retry_after in seen:
                if status == 503:
                    assert_error_envelope(body, 503)
                    assert retry_after.isdigit(), (what, body)
            created = {s[2]["id"] for s in seen if s[0] == "create" and s[1] == 200}
            with httpx.Client(base_url=server.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                listed = {f["id"] for f in http.get("/v1/files").json()["data"]}
            assert created <= listed, f"lost rows: {created - listed}"
