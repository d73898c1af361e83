"""Unit tests for pure logic: JSONL checking, the base-model registry, settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.api.files.service import check_jsonl
from service.core.errors import InvalidRequest
from service.core.registry import RegistryError, load_registry
from service.core.settings import Settings


def write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "f.jsonl"
    p.write_bytes(data)
    return p


def test_check_jsonl_counts_objects_and_skips_blank_lines(tmp_path: Path) -> None:
    assert check_jsonl(write(tmp_path, b'{"a": 1}\n\n{"b": 2}\n\n')) == 2


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [
        (b'{"a": 1}\n' * 6 + b'{"a": \n' + b'{"a": 1}\n', 7, "not valid JSON"),
        (b'{"a": 1}\n[1, 2]\n', 2, "a JSON list"),
        (b'"text"\n', 1, "a JSON str"),
        (b'{"a": 1}\n{"a": "\xff\xfe"}\n', 2, "not UTF-8"),
    ],
)
def test_check_jsonl_names_the_first_bad_line(tmp_path: Path, data: bytes, line: int, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_jsonl(write(tmp_path, data))
    assert f"line {line} " in exc.value.message
    assert fragment in exc.value.message
    assert exc.value.param == "file"


def test_check_jsonl_refuses_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="no lines"):
        check_jsonl(write(tmp_path, b"\n \n"))


def test_registry_default_and_operator_entries(tmp_path: Path) -> None:
    assert "SmolLM2-135M-Instruct" in load_registry(None)
    extra = tmp_path / "models.yaml"
    extra.write_text("- name: my-llama\n  source: hf_dir\n  location: /models/llama\n  context_length: 4096\n")
    models = load_registry(extra)
    assert models["my-llama"].context_length == 4096 and "SmolLM2-135M-Instruct" in models


@pytest.mark.parametrize(
    "text",
    [
        "- name: x\n  source: ftp\n  location: y\n",
        "- name: x\n  location: y\n",
        "name: x\n",
        "- name: x\n  source: hub\n  location: y\n  typo: 1\n",
    ],
)
def test_registry_refuses_bad_entries(tmp_path: Path, text: str) -> None:
    extra = tmp_path / "models.yaml"
    extra.write_text(text)
    with pytest.raises(RegistryError):
        load_registry(extra)


def test_production_refuses_embedded_defaults() -> None:
    with pytest.raises(ValidationError, match="TAILOR_DATABASE_URL"):
        Settings(_env_file=None, environment="production")  # type: ignore[call-arg]
    ok = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="production",
        database_url="postgresql+asyncpg://db/tailor",
        storage_url="s3://bucket/tailor",
    )
    assert ok.resolved_storage_url == "s3://bucket/tailor"


def test_development_defaults_live_in_the_data_dir(tmp_path: Path) -> None:
    s = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert s.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'tailor.db'}"
    assert s.resolved_storage_url == (tmp_path / "objects").as_uri()


def test_access_log_redacts_secrets_in_the_query(caplog: pytest.LogCaptureFixture) -> None:
    from service.api.middleware import _log_access

    scope = {"method": "GET", "path": "/v1/models", "query_string": b"api_key=sk-tailor-secret&limit=2&token=t0k", "client": None}
    with caplog.at_level("INFO", logger="tailor.access"):
        _log_access(scope, 200, 0.001)
    line = caplog.records[-1].getMessage()
    assert "sk-tailor-secret" not in line and "t0k" not in line, line
    assert "api_key=REDACTED&limit=2&token=REDACTED" in line, line
