"""Webhooks as OpenAI sends them, received on a local HTTP endpoint and verified with the
official SDK's `client.webhooks.unwrap`: every event type, retries with the same
`webhook-id`, an API killed before delivery that delivers after restart, and the address
policy (no private addresses unless the operator allows them).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import fresh_database_url
from helpers_db import _load_job, run_db, succeed_job
from sqlalchemy.ext.asyncio import AsyncSession

from service.cli.devservers import TailorEvalWorker, TailorServer, running_server, start_server
from service.core.settings import Settings
from service.jobs import lifecycle as lc
from service.webhooks import urls
from service.webhooks.delivery import next_wait

LINE = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every request and fails the first
    `failures` of them with a 500."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.failures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    failing = receiver.failures > 0
                    receiver.failures -= 1 if failing else 0
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_type(self, event_type: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for h, b in self.received if json.loads(b)["type"] == event_type]

    def wait_for(
        self, event_type: str, object_id: str, count: int = 1, timeout: float = 30
    ) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [(h, b) for h, b in self.of_type(event_type) if json.loads(b)["data"]["id"] == object_id]
            if len(got) >= count:
                return got
            time.sleep(0.1)
        raise AssertionError(f"no {event_type} for {object_id} (received {len(self.received)} requests)")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


HOOK_SETTINGS = {"TAILOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true", "TAILOR_WEBHOOK_RETRY_BASE_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def hook_server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailorServer]:
    # A database of its own: the session's other servers run delivery loops too, under a
    # policy that refuses these loopback endpoints.
    data = tmp_path_factory.mktemp("webhooks")
    with fresh_database_url(data / "db") as db:
        env = {
            **server_env,
            **HOOK_SETTINGS,
            "TAILOR_DATABASE_URL": db,
            "TAILOR_STORAGE_URL": (data / "objects").as_uri(),
            "TAILOR_EVAL_QUEUE_NAME": server_env["TAILOR_QUEUE_NAME"] + ":hook-evals",
        }
        with running_server(env, data / "server") as s:
            yield s


def _endpoint(server: TailorServer, project: str, url: str, *events: str) -> tuple[str, str]:
    args = [a for e in events for a in ("--event", e)]
    endpoint_id, secret = server.cli("webhooks", "add", "--project", project, "--url", url, *args).stdout.split()
    return endpoint_id, secret


def _unwrap(client: openai.OpenAI, delivery: tuple[dict[str, str], bytes], secret: str) -> Any:
    headers, body = delivery
    return client.webhooks.unwrap(body.decode(), headers, secret=secret)


def _fail_job(database_url: str, job_id: str) -> None:
    async def go(session: AsyncSession) -> None:
        job = await _load_job(session, job_id)
        assert await lc.transition(session, job, lc.FAILED, allowed_from=lc.ACTIVE, message="Fine-tuning job failed")
        await session.commit()

    run_db(database_url, go)


def _job(client: openai.OpenAI) -> Any:
    file_id = client.files.create(file=("t.jsonl", LINE * 10), purpose="fine-tune").id
    return client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=file_id)


def test_every_event_arrives_signed_and_the_sdk_verifies_it(
    hook_server: TailorServer, receiver: Receiver, tmp_path: Path
) -> None:
    key = hook_server.create_key("hooks")
    client = openai.OpenAI(base_url=hook_server.base_url, api_key=key, max_retries=0, webhook_secret=None)
    _, secret = _endpoint(hook_server, "hooks", receiver.url)
    db = hook_server.env["TAILOR_DATABASE_URL"]

    succeeded, cancelled, failed = _job(client), _job(client), _job(client)
    succeed_job(db, succeeded.id, "hooks")
    client.fine_tuning.jobs.cancel(cancelled.id)
    _fail_job(db, failed.id)
    for event_type, job in (("succeeded", succeeded), ("cancelled", cancelled), ("failed", failed)):
        event = _unwrap(client, receiver.wait_for(f"fine_tuning.job.{event_type}", job.id)[0], secret)
        assert event.type == f"fine_tuning.job.{event_type}" and event.data.id == job.id and event.object == "event"

    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    check = {"type": "string_check", "name": "q", "input": "{{item.q}}", "reference": "a", "operation": "eq"}
    ev = client.evals.create(data_source_config={"type": "custom", "item_schema": schema}, testing_criteria=[check])
    good = {"type": "jsonl", "source": {"type": "file_content", "content": [{"item": {"q": "a"}}]}}
    bad = {"type": "jsonl", "source": {"type": "file_content", "content": [{"item": {"nope": 1}}]}}
    canceled = client.evals.runs.create(ev.id, data_source=good)  # no eval worker yet: it waits
    client.evals.runs.cancel(canceled.id, eval_id=ev.id)
    worker = TailorEvalWorker(hook_server.env, tmp_path / "evals", "hooks-evals")
    try:
        ran, broke = client.evals.runs.create(ev.id, data_source=good), client.evals.runs.create(ev.id, data_source=bad)
        for event_type, run in (("canceled", canceled), ("succeeded", ran), ("failed", broke)):
            event = _unwrap(client, receiver.wait_for(f"eval.run.{event_type}", run.id, timeout=60)[0], secret)
            assert event.type == f"eval.run.{event_type}" and event.data.id == run.id
    finally:
        worker.stop()
    # A wrong secret is refused by the SDK: the signature is real.
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _unwrap(client, receiver.wait_for("fine_tuning.job.succeeded", succeeded.id)[0], "whsec_" + "A" * 44)
    client.close()


def test_a_failing_endpoint_gets_the_same_event_again_until_it_answers(hook_server: TailorServer, receiver: Receiver) -> None:
    key = hook_server.create_key("retries")
    client = openai.OpenAI(base_url=hook_server.base_url, api_key=key, max_retries=0)
    endpoint_id, secret = _endpoint(hook_server, "retries", receiver.url, "fine_tuning.job.succeeded")
    job = _job(client)
    receiver.failures = 2
    succeed_job(hook_server.env["TAILOR_DATABASE_URL"], job.id, "retries")
    attempts = receiver.wait_for("fine_tuning.job.succeeded", job.id, count=3, timeout=30)
    assert len({h["webhook-id"] for h, _ in attempts}) == 1  # one message, three attempts
    assert _unwrap(client, attempts[2], secret).data.id == job.id
    listing = hook_server.cli("webhooks", "deliveries", "--endpoint", endpoint_id).stdout
    row = next(line for line in listing.splitlines() if line.startswith(attempts[0][0]["webhook-id"]))
    assert row.split()[2:4] == ["delivered", "3"], listing
    client.close()


def test_the_api_killed_before_delivery_delivers_the_same_event_after_restart(
    redis_url: str, queue_name: str, receiver: Receiver, tmp_path: Path
) -> None:
    with fresh_database_url(tmp_path / "db") as db:
        env = {
            "TAILOR_DATABASE_URL": db,
            "TAILOR_REDIS_URL": redis_url,
            "TAILOR_QUEUE_NAME": f"{queue_name}:hooks-restart",
            "TAILOR_STORAGE_URL": (tmp_path / "objects").as_uri(),
            **HOOK_SETTINGS,
            "TAILOR_WEBHOOK_RETRY_BASE_SECONDS": "1",
        }
        first = start_server(env, tmp_path / "first")
        client = openai.OpenAI(base_url=first.base_url, api_key=first.create_key("restart"), max_retries=0)
        _endpoint(first, "restart", receiver.url)
        job = _job(client)
        receiver.failures = 10**6  # nothing gets through while the first API lives
        succeed_job(db, job.id, "restart")
        tried = receiver.wait_for("fine_tuning.job.succeeded", job.id)
        first.proc.kill()
        first.proc.wait()
        receiver.failures = 0
        second = start_server(env, tmp_path / "second")
        try:
            attempts = receiver.wait_for("fine_tuning.job.succeeded", job.id, count=len(tried) + 1, timeout=60)
            assert {h["webhook-id"] for h, _ in attempts} == {tried[0][0]["webhook-id"]}
        finally:
            second.stop()
            first.stop()
            client.close()


def test_private_addresses_are_refused_unless_the_operator_allows_them(server: TailorServer) -> None:
    server.create_key("policy")
    for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest", "http://[::1]/x"):
        result = server.cli("webhooks", "add", "--project", "policy", "--url", url, check=False)
        assert result.returncode != 0 and "private, loopback or link-local" in result.stderr, (url, result.stderr)
    result = server.cli("webhooks", "add", "--project", "policy", "--url", "ftp://example.com/x", check=False)
    assert result.returncode != 0 and "must use" in result.stderr
    production = Settings(environment="production", database_url="sqlite+aiosqlite:///x.db", storage_url="file:///tmp/x")
    with pytest.raises(urls.RefusedUrl, match="https"):
        asyncio.run(urls.check("http://example.com/hook", production))
    result = server.cli("webhooks", "add", "--project", "policy", "--url", "https://x.test/h", "--event", "nope", check=False)
    assert result.returncode != 0 and "unknown event type" in result.stderr


def test_backoff_grows_about_threefold_and_is_bounded() -> None:
    settings = Settings(webhook_retry_base_seconds=5)
    assert [next_wait(settings, n) for n in (1, 2, 3, 4)] == [5, 15, 45, 135]
    assert next_wait(settings, 40) == 4 * 3600
