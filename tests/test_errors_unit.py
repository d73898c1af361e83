"""The error layer in-process: envelopes, params, request ids and crashes."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from service.api.errors import install_error_handlers
from service.api.errors import param_from_location as _param_from_location
from service.api.metrics import ApiMetrics
from service.api.middleware import RequestMiddleware
from service.core.errors import NotFound


class Body(BaseModel):
    n: int = Field(ge=1, le=50)
    nested: dict[str, int] = {}


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestMiddleware, metrics=ApiMetrics())

    @app.post("/things")
    async def create(body: Body) -> dict[str, int]:
        return {"n": body.n}

    @app.get("/missing")
    async def missing() -> None:
        raise NotFound("No such thing: x", param="id")

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret internal detail")

    return app


class SyncASGIClient:
    """Requests straight into the ASGI app (no server), one event loop per call."""

    def __init__(self, app: FastAPI):
        self.app = app

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.request(method, url, **kwargs)

        return asyncio.run(go())

    def get(self, url: str, **kw) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw) -> httpx.Response:
        return self.request("POST", url, **kw)

    def delete(self, url: str, **kw) -> httpx.Response:
        return self.request("DELETE", url, **kw)


@pytest.fixture
def client() -> SyncASGIClient:
    return SyncASGIClient(make_app())


def test_crash_is_a_500_envelope_without_the_trace(client, caplog) -> None:
    with caplog.at_level(logging.CRITICAL, logger="tailor.errors"):
        r = client.get("/crash")
    assert r.status_code == 500
    assert r.json() == {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "secret" not in r.text
    assert r.headers["x-request-id"].startswith("req_")


def test_validation_error_names_the_field(client) -> None:
    r = client.post("/things", json={"n": 99})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "n" and err["type"] == "invalid_request_error"
    assert "50" in err["message"]


def test_missing_field_and_bad_json(client) -> None:
    r = client.post("/things", json={})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert "Missing required parameter" in r.json()["error"]["message"]
    r = client.post("/things", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] is None


def test_unknown_route_and_wrong_method(client) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = client.delete("/things")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert "x-request-id" in r.headers


def test_api_error_and_incoming_request_id_is_kept(client) -> None:
    r = client.get("/missing", headers={"x-request-id": "abc-123"})
    assert r.status_code == 404
    assert r.json()["error"] == {"message": "No such thing: x", "type": "invalid_request_error", "param": "id", "code": None}
    assert r.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (("body", "hyperparameters", "n_epochs", "int"), "hyperparameters.n_epochs"),
        (("body", "hyperparameters", "n_epochs", "literal['auto']"), "hyperparameters.n_epochs"),
        (("body", "integrations", 0, "wandb", "project"), "integrations[0].wandb.project"),
        (("query", "limit"), "limit"),
        (("body",), None),
    ],
)
def test_param_from_location(loc, param) -> None:
    assert _param_from_location(loc) == param
