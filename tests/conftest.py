"""Real backing services for the tests, no mocks: a database (PostgreSQL when
TAILOR_TEST_DATABASE_URL names a server, else SQLite), Redis (TAILOR_TEST_REDIS_URL, else a
private redis-server), an S3 endpoint (moto's server), and `tailor serve` itself.

Every process started here binds 127.0.0.1 only and is stopped when the session ends,
whether or not the tests passed; `_STARTED` plus an atexit hook catch what a crash skipped.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from service.cli.devservers import (  # noqa: F401  (re-exported for the tests)
    TailorServer,
    _http_answers,
    _spawn,
    _wait_until,
    clean_env,
    free_port,
    log_tail,
    private_redis,
    running_server,
    start_server,
    stop_process,
)

# --- database -------------------------------------------------------------------------


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg_admin(server_url: str, statements: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(server_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def fresh_database_url(tmp_dir: Path | None = None) -> Iterator[str]:
    """A new, empty database; yields its SQLAlchemy async URL and removes it afterwards.

    With TAILOR_TEST_DATABASE_URL (a PostgreSQL server, e.g. the CI one) a uniquely named
    database is created on that server and dropped at the end. Otherwise it is a SQLite file
    in `tmp_dir` (kept for inspection), or in a temporary directory deleted at the end.
    """
    server_url = os.environ.get("TAILOR_TEST_DATABASE_URL")
    if server_url:
        from sqlalchemy.engine import make_url

        name = f"tailor_test_{uuid.uuid4().hex[:16]}"
        asyncio.run(_pg_admin(server_url, [f'CREATE DATABASE "{name}"']))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            asyncio.run(_pg_admin(server_url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']))
        return
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        yield f"sqlite+aiosqlite:///{(tmp_dir / f'tailor-{uuid.uuid4().hex[:8]}.db').resolve()}"
        return
    with tempfile.TemporaryDirectory(prefix="tailor-db-") as d:
        yield f"sqlite+aiosqlite:///{Path(d).resolve() / 'tailor.db'}"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database_url(tmp_path_factory.mktemp("db")) as url:
        yield url


# --- redis ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    shared = os.environ.get("TAILOR_TEST_REDIS_URL")
    if shared:
        yield shared
        return
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def queue_name(redis_url: str) -> Iterator[str]:
    """An arq queue of this session's own, so runs sharing one Redis never see each other's jobs."""
    name = f"tailor:test:{uuid.uuid4().hex[:12]}"
    yield name
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # the private server may already be gone; nothing to clean then
    finally:
        client.close()


# --- S3 (moto) ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """moto's S3 server on 127.0.0.1 with one fresh bucket; yields (endpoint_url, bucket).

    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY=testing and AWS_DEFAULT_REGION=us-east-1 are set
    in os.environ for the session, so servers and workers started later inherit them.
    """
    import boto3

    workdir = tmp_path_factory.mktemp("moto")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = workdir / "moto.log"
    with pytest.MonkeyPatch.context() as mp:
        for var, value in (
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            mp.setenv(var, value)
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        proc = _spawn(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path, env=os.environ, cwd=workdir
        )
        try:
            _wait_until(lambda: _http_answers(f"{endpoint}/"), proc, "moto_server", log_path, timeout=60)
            bucket = f"tailor-test-{uuid.uuid4().hex[:12]}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            try:
                client.create_bucket(Bucket=bucket)
            finally:
                client.close()
            yield endpoint, bucket
        finally:
            stop_process(proc)


# --- tailor serve ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def server_env(database_url: str, redis_url: str, queue_name: str) -> dict[str, str]:
    """The settings every test server shares: this session's database, Redis and queue."""
    return {
        "TAILOR_DATABASE_URL": database_url,
        "TAILOR_REDIS_URL": redis_url,
        "TAILOR_QUEUE_NAME": queue_name,
        "TAILOR_EVAL_QUEUE_NAME": f"{queue_name}:evals",
    }


@pytest.fixture(scope="session")
def server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailorServer]:
    data_dir = tmp_path_factory.mktemp("server")
    storage = (data_dir / "objects").resolve()
    storage.mkdir()
    with running_server({**server_env, "TAILOR_STORAGE_URL": storage.as_uri()}, data_dir) as s:
        yield s


@pytest.fixture(scope="session")
def key_a(server: TailorServer) -> str:
    return server.create_key("alpha")


@pytest.fixture(scope="session")
def key_b(server: TailorServer) -> str:
    return server.create_key("beta")


@contextmanager
def _openai_client(server: TailorServer, key: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def client_a(server: TailorServer, key_a: str) -> Iterator[openai.OpenAI]:
    with _openai_client(server, key_a) as client:
        yield client


@pytest.fixture(scope="session")
def client_b(server: TailorServer, key_b: str) -> Iterator[openai.OpenAI]:
    with _openai_client(server, key_b) as client:
        yield client


@pytest.fixture(scope="session")
def http_a(server: TailorServer, key_a: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root_url, headers={"Authorization": f"Bearer {key_a}"}, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def http_b(server: TailorServer, key_b: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root_url, headers={"Authorization": f"Bearer {key_b}"}, timeout=30) as client:
        yield client
