"""Limits a shared Tailor needs (issue 15): per-key rate limits with OpenAI's headers, a token
on /metrics, CORS closed unless the operator opens it; against real `tailor serve` and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import TailorServer, running_server
from spec import assert_error_envelope

LIMIT = 5
ALLOWED_ORIGIN = "https://dashboard.example"


@pytest.fixture(scope="module")
def guarded(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailorServer]:
    env = {
        **server_env,
        "TAILOR_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "TAILOR_METRICS_TOKEN": "metrics-s3cret",
        "TAILOR_CORS_ALLOW_ORIGINS": f'["{ALLOWED_ORIGIN}"]',
    }
    with running_server(env, tmp_path_factory.mktemp("guarded")) as server:
        yield server


def fresh_window() -> None:
    # The window is a clock minute; start well inside one so LIMIT + 1 requests share it.
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_a_key_over_its_limit_gets_429_with_retry_after(guarded: TailorServer) -> None:
    key, other = guarded.create_key("limited"), guarded.create_key("unlimited")
    fresh_window()
    with openai.OpenAI(base_url=guarded.base_url, api_key=key, max_retries=0) as client:
        remaining = []
        for _ in range(LIMIT):
            raw = client.models.with_raw_response.list()
            assert raw.headers["x-ratelimit-limit-requests"] == str(LIMIT)
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
            assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert remaining == list(range(LIMIT - 1, -1, -1))
        with pytest.raises(openai.RateLimitError) as exc:
            client.models.list()
    assert exc.value.code == "rate_limit_exceeded"
    resp = exc.value.response
    assert_error_envelope(resp, 429)
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    ok = httpx.get(f"{guarded.base_url}/models", headers={"Authorization": f"Bearer {other}"}, timeout=10)
    assert ok.status_code == 200, "another key has its own budget"


def test_health_is_never_limited(guarded: TailorServer) -> None:
    assert all(httpx.get(f"{guarded.root_url}/health", timeout=10).status_code == 200 for _ in range(LIMIT * 2))


def test_metrics_needs_its_token_when_one_is_set(guarded: TailorServer) -> None:
    refused = httpx.get(f"{guarded.root_url}/metrics", timeout=10)
    assert_error_envelope(refused, 401)
    wrong = httpx.get(f"{guarded.root_url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    scraped = httpx.get(f"{guarded.root_url}/metrics", headers={"Authorization": "Bearer metrics-s3cret"}, timeout=10)
    assert scraped.status_code == 200 and "tailor_dependency_up" in scraped.text


def preflight(server: TailorServer, origin: str) -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    return httpx.options(f"{server.base_url}/models", headers=headers, timeout=10)


def test_cors_is_closed_by_default(server: TailorServer, key_a: str) -> None:
    assert "access-control-allow-origin" not in preflight(server, ALLOWED_ORIGIN).headers
    got = httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {key_a}", "Origin": ALLOWED_ORIGIN})
    assert got.status_code == 200 and "access-control-allow-origin" not in got.headers


def test_cors_opens_to_the_origins_the_operator_names(guarded: TailorServer) -> None:
    assert preflight(guarded, ALLOWED_ORIGIN).headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "access-control-allow-origin" not in preflight(guarded, "https://evil.example").headers


def test_limits_do_not_apply_when_redis_is_away(server_env: dict[str, str], tmp_path: Path) -> None:
    env = {**server_env, "TAILOR_REDIS_URL": "redis://127.0.0.1:1/0", "TAILOR_RATE_LIMIT_PER_MINUTE": "1"}
    with running_server(env, tmp_path) as server:
        key = server.create_key("no-redis")
        statuses = {
            httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {key}"}).status_code for _ in range(3)
        }
        assert statuses == {200}
