"""openapi/openapi.yaml is generated from the app; this fails when the two drift apart."""

from pathlib import Path

from service.api.openapi import render_openapi

DOC = Path(__file__).resolve().parents[1] / "openapi" / "openapi.yaml"


def test_checked_in_openapi_matches_the_app() -> None:
    assert DOC.read_text() == render_openapi(), "openapi/openapi.yaml is stale: run `make openapi` and commit it"


def test_openapi_documents_every_implemented_path() -> None:
    text = render_openapi()
    for path in (
        "/v1/files:",
        "/v1/files/{file_id}/content:",
        "/v1/uploads/{upload_id}/complete:",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints:",
        "/v1/models/{model}:",
    ):
        assert path in text
