"""/v1/fine_tuning/alpha/graders: validate a grader here; run one on an eval worker.

Grading runs where eval runs do (`tailor eval-worker`): the cosine metric loads an embedding
model (torch) and the python grader a sandbox, neither of which belongs in the API process.
The request waits for the worker's answer, up to TAILOR_GRADER_RUN_TIMEOUT_SECONDS.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.api.deps import PrincipalDep, QueueDep, SettingsDep
from service.api.errors import error_responses
from service.api.fields import RequestBody
from service.core.settings import Settings
from service.evals.availability import cosine_available
from service.evals.graders import Grader, check_references, check_supported, grader_to_dict, parse_grader
from service.evals.runs import GRADER_FUNCTION

router = APIRouter(prefix="/fine_tuning/alpha/graders", tags=["Graders"], responses=error_responses(400, 401, 503))


class ValidateGraderRequest(RequestBody):
    grader: dict[str, Any]


class ValidateGraderResponse(BaseModel):
    grader: dict[str, Any]


class RunGraderRequest(RequestBody):
    grader: dict[str, Any]
    item: dict[str, Any] | None = None
    model_sample: str


# The spec's RunGraderRequest and ValidateGraderRequest: no top-level label_model.
GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")


def checked_grader(obj: dict[str, Any], settings: Settings) -> Grader:
    grader = parse_grader(obj, param="grader", allowed=GRADER_TYPES)
    check_references(grader, None, True, param="grader")
    check_supported(grader, param="grader", python_enabled=settings.python_grader, cosine_enabled=cosine_available(settings))
    return grader


@router.post("/validate", response_model=ValidateGraderResponse)
async def validate_grader(body: ValidateGraderRequest, principal: PrincipalDep, settings: SettingsDep) -> ValidateGraderResponse:
    return ValidateGraderResponse(grader=grader_to_dict(checked_grader(body.grader, settings)))


@router.post("/run", response_model=dict[str, Any])
async def run_grader(body: RunGraderRequest, principal: PrincipalDep, queue: QueueDep, settings: SettingsDep) -> Any:
    checked_grader(body.grader, settings)
    payload = {
        "project_id": principal.project_id,
        "grader": body.grader,
        "item": body.item or {},
        "model_sample": body.model_sample,
    }
    answer = await queue.call(GRADER_FUNCTION, payload, settings.eval_queue_name, settings.grader_run_timeout_seconds)
    if "error" in answer:  # the worker's refusal (a disabled python grader, a metric it lacks)
        return JSONResponse(answer["error"], status_code=answer["status"])
    return answer["result"]
