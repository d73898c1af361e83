"""The spec validator itself: it must accept what the OpenAI spec accepts and refuse what it
refuses, or every conformance check built on it proves nothing."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator
from spec import _openapi_to_json_schema, _spec_path, assert_error_envelope, load_spec, validate


def raw_schemas() -> dict[str, Any]:
    with open(_spec_path(), encoding="utf-8") as f:
        return yaml.safe_load(f)["components"]["schemas"]


def spec_example(schema_name: str) -> dict[str, Any]:
    return json.loads(raw_schemas()[schema_name]["x-oaiMeta"]["example"])


def running_job() -> dict[str, Any]:
    """A job as Tailor returns it while it trains: every nullable field null."""
    return {
        "object": "fine_tuning.job",
        "id": "ftjob-abc123",
        "model": "SmolLM2-135M-Instruct",
        "created_at": 1721764800,
        "finished_at": None,
        "fine_tuned_model": None,
        "organization_id": "proj_alpha",
        "result_files": [],
        "status": "running",
        "validation_file": None,
        "training_file": "file-abc123",
        "hyperparameters": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"},
        "trained_tokens": None,
        "error": None,
        "integrations": None,
        "seed": 42,
        "estimated_finish": None,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"batch_size": "auto", "learning_rate_multiplier": 0.5, "n_epochs": 3}},
        },
        "metadata": None,
    }


def good_file() -> dict[str, Any]:
    return {
        "id": "file-abc123",
        "object": "file",
        "bytes": 120000,
        "created_at": 1677610602,
        "expires_at": 1680202602,
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "status": "processed",
    }


def refusal(body: Any, schema_name: str) -> str:
    with pytest.raises(AssertionError) as exc:
        validate(body, schema_name)
    return str(exc.value)


# --- accepted -------------------------------------------------------------------------


def test_spec_example_of_a_finished_job_is_valid() -> None:
    # The spec's example leaves out `error`, which its own schema requires (null when the
    # job did not fail); everything else is taken as written.
    job = spec_example("FineTuningJob") | {"error": None}
    assert job["status"] == "succeeded" and job["hyperparameters"]["learning_rate_multiplier"] == 1.0
    validate(job, "FineTuningJob")


def test_running_job_with_nulls_is_valid() -> None:
    validate(running_job(), "FineTuningJob")


def test_failed_job_with_error_object_is_valid() -> None:
    job = running_job() | {
        "status": "failed",
        "finished_at": 1721765800,
        "error": {"code": "invalid_training_file", "message": "line 3 is not JSON", "param": "training_file"},
    }
    validate(job, "FineTuningJob")


def test_paused_is_accepted_as_the_spec_pause_example_answers() -> None:
    validate(running_job() | {"status": "paused"}, "FineTuningJob")


def test_learning_rate_multiplier_above_zero_is_valid() -> None:
    # The spec writes `minimum: 0, exclusiveMinimum: true` (OpenAPI 3.0); read as 2020-12
    # unchanged, `true` would act as a minimum of 1 and refuse 0.5.
    job = running_job()
    job["hyperparameters"]["learning_rate_multiplier"] = 0.05
    validate(job, "FineTuningJob")


def test_file_with_status_is_valid() -> None:
    validate(good_file(), "OpenAIFile")
    validate({k: v for k, v in good_file().items() if k != "expires_at"} | {"status_details": "ok"}, "OpenAIFile")


def test_lists_events_and_checkpoints_are_valid() -> None:
    validate({"object": "list", "data": [running_job()], "has_more": False}, "ListPaginatedFineTuningJobsResponse")
    validate(
        {"object": "list", "data": [good_file()], "first_id": "file-abc123", "last_id": "file-abc123", "has_more": False},
        "ListFilesResponse",
    )
    event = {
        "object": "fine_tuning.job.event",
        "id": "ftevent-abc123",
        "created_at": 1677610602,
        "level": "info",
        "message": "Created fine-tuning job",
        "data": {},
        "type": "message",
    }
    validate({"object": "list", "data": [event], "has_more": True}, "ListFineTuningJobEventsResponse")
    validate(spec_example("FineTuningJobCheckpoint"), "FineTuningJobCheckpoint")


def test_error_envelope_is_valid() -> None:
    body = {"error": {"message": "No such job: ftjob-x", "type": "invalid_request_error", "param": "id", "code": None}}
    assert assert_error_envelope(body, 404)["param"] == "id"
    response = httpx.Response(500, json={"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
    assert assert_error_envelope(response, 500)["type"] == "server_error"


def test_nullable_fields_of_the_real_spec_accept_null() -> None:
    # `type: integer, nullable: true` and a nullable `$ref` in the spec itself.
    messages = [{"role": "user", "content": "Hi"}]
    validate({"model": "m", "messages": messages, "max_completion_tokens": None, "n": None}, "CreateChatCompletionRequest")
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": None}
    validate(chunk, "CreateChatCompletionStreamResponse")


# --- refused --------------------------------------------------------------------------


def test_missing_required_field_is_refused() -> None:
    job = running_job()
    del job["seed"]
    assert "'seed' is a required property" in refusal(job, "FineTuningJob")


def test_wrong_enum_is_refused() -> None:
    message = refusal(running_job() | {"status": "done"}, "FineTuningJob")
    assert "$.status" in message and "'done' is not one of" in message
    assert "$.object" in refusal(running_job() | {"object": "fine_tuning.jobs"}, "FineTuningJob")


def test_wrong_type_is_refused() -> None:
    assert "$.created_at" in refusal(running_job() | {"created_at": "2024-07-23"}, "FineTuningJob")
    assert "$.seed" in refusal(running_job() | {"seed": None}, "FineTuningJob")
    assert "$.result_files" in refusal(running_job() | {"result_files": None}, "FineTuningJob")
    assert "$.bytes" in refusal(good_file() | {"bytes": "120000"}, "OpenAIFile")


def test_out_of_range_hyperparameters_are_refused() -> None:
    job = running_job()
    job["hyperparameters"]["learning_rate_multiplier"] = 0
    assert "$.hyperparameters.learning_rate_multiplier" in refusal(job, "FineTuningJob")
    job = running_job()
    job["method"]["supervised"]["hyperparameters"]["n_epochs"] = 51
    assert "$.method.supervised.hyperparameters.n_epochs" in refusal(job, "FineTuningJob")


def test_file_status_is_required_and_checked() -> None:
    bad = good_file()
    del bad["status"]
    assert "'status' is a required property" in refusal(bad, "OpenAIFile")
    assert "$.status" in refusal(good_file() | {"status": "ready"}, "OpenAIFile")
    assert "$.purpose" in refusal(good_file() | {"purpose": "training"}, "OpenAIFile")


def test_every_error_is_listed_with_its_path() -> None:
    job = running_job() | {"status": "done", "created_at": "now", "error": {"code": "x"}}
    del job["training_file"]
    message = refusal(job, "FineTuningJob")
    assert "4 error(s)" in message
    for fragment in ("$.status", "$.created_at", "$.error", "'training_file' is a required property"):
        assert fragment in message, message
    # anyOf/oneOf refusals explain each branch, so the missing `message` inside `error` shows.
    assert "'message' is a required property" in message


def test_nested_errors_point_into_lists() -> None:
    page = {"object": "list", "data": [running_job(), running_job() | {"status": "bogus"}], "has_more": False}
    assert "$.data[1].status" in refusal(page, "ListPaginatedFineTuningJobsResponse")


def test_bad_error_envelopes_are_refused() -> None:
    good = {"message": "m", "type": "invalid_request_error", "param": None, "code": None}
    for bad in (
        {"message": "m", "type": "invalid_request_error", "code": None},  # param missing
        {"error": {k: v for k, v in good.items() if k != "code"}},
        {"error": good | {"param": 3}},
        {"error": good | {"message": "  "}},
        {"detail": "Not Found"},
    ):
        with pytest.raises(AssertionError):
            assert_error_envelope(bad)
    with pytest.raises(AssertionError, match="error type"):
        assert_error_envelope({"error": good | {"type": "server_error"}}, 404)
    with pytest.raises(AssertionError, match="expected HTTP 404, got 400"):
        assert_error_envelope(httpx.Response(400, json={"error": good}), 404)


def test_unknown_schema_name_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="FineTuningJobs"):
        validate({}, "FineTuningJobs")


# --- the OpenAPI 3.0 rewrite ----------------------------------------------------------


def test_rewrite_of_nullable_and_exclusive_bounds() -> None:
    ref = {"$ref": "#/components/schemas/X"}
    assert _openapi_to_json_schema({"type": "integer", "nullable": True}) == {"type": ["integer", "null"]}
    assert _openapi_to_json_schema({"type": "string", "enum": ["a"], "nullable": True}) == {
        "type": ["string", "null"],
        "enum": ["a", None],
    }
    assert _openapi_to_json_schema(ref | {"nullable": True}) == {"anyOf": [ref, {"type": "null"}]}
    assert _openapi_to_json_schema({"oneOf": [ref], "nullable": True}) == {"anyOf": [{"oneOf": [ref]}, {"type": "null"}]}
    assert _openapi_to_json_schema({"type": "string", "nullable": False}) == {"type": "string"}
    assert _openapi_to_json_schema({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {
        "type": "number",
        "exclusiveMinimum": 0,
    }
    assert _openapi_to_json_schema({"type": "number", "maximum": 2, "exclusiveMaximum": False}) == {
        "type": "number",
        "maximum": 2,
    }


def test_rewrite_walks_schemas_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "nullable": {"type": "boolean"},  # a property that happens to be called so
            "items": {"type": "array", "items": {"type": "string", "nullable": True}},
        },
        "example": {"nullable": True},
    }
    before = copy.deepcopy(schema)
    out = _openapi_to_json_schema(schema)
    assert schema == before, "the input must not be modified"
    assert out["properties"]["nullable"] == {"type": "boolean"}
    assert out["properties"]["items"]["items"] == {"type": ["string", "null"]}
    assert out["example"] == {"nullable": True}


def test_rewritten_spec_is_valid_json_schema_2020_12() -> None:
    schemas = load_spec()["components"]["schemas"]
    text = json.dumps(schemas)
    assert '"nullable"' not in text
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    assert "paused" in schemas["FineTuningJob"]["properties"]["status"]["enum"]
    assert "paused" not in raw_schemas()["FineTuningJob"]["properties"]["status"]["enum"]
