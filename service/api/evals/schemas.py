"""Request and response shapes of the Evals API (OpenAI spec: CreateEvalRequest, Eval,
CreateEvalRunRequest, EvalRun, EvalRunOutputItem and their lists).

Data sources and testing criteria are taken as JSON objects and checked by
service.py / service.evals, which name the exact field at fault (`testing_criteria[1].input`)
where a union of pydantic models would report every branch that did not match.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.api.fields import Metadata, RequestBody
from service.api.pagination import IdPage
from service.core.tables import Eval, EvalOutputItem, EvalRun


class EvalCreate(RequestBody):
    name: str | None = Field(None, max_length=512)
    metadata: Metadata | None = None
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]] = Field(min_length=1, max_length=64)


class EvalUpdate(RequestBody):
    name: str | None = Field(None, max_length=512)
    metadata: Metadata | None = None


class EvalObject(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    created_at: int
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, row: Eval) -> EvalObject:
        return cls(
            id=row.id,
            name=row.name,
            data_source_config=row.data_source_config,
            testing_criteria=row.testing_criteria,
            created_at=row.created_at,
            metadata=row.metadata_,
        )


class EvalList(IdPage[EvalObject]):
    pass


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


class RunCreate(RequestBody):
    name: str | None = Field(None, max_length=512)
    metadata: Metadata | None = None
    data_source: dict[str, Any]


class EvalApiError(BaseModel):
    code: str
    message: str


class RunObject(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    status: str
    model: str
    name: str
    created_at: int
    report_url: str
    result_counts: dict[str, int]
    per_model_usage: list[dict[str, Any]]
    per_testing_criteria_results: list[dict[str, Any]]
    data_source: dict[str, Any]
    metadata: dict[str, str] | None
    # null while nothing went wrong, as OpenAI sends it.
    error: EvalApiError | None

    @classmethod
    def of(cls, row: EvalRun) -> RunObject:
        return cls(
            id=row.id,
            eval_id=row.eval_id,
            status=row.status,
            model=row.model,
            name=row.name,
            created_at=row.created_at,
            report_url=row.report_url,
            result_counts=row.result_counts,
            per_model_usage=row.per_model_usage,
            per_testing_criteria_results=row.per_testing_criteria_results,
            data_source=row.data_source,
            metadata=row.metadata_,
            error=EvalApiError(**row.error) if row.error else None,
        )


class RunList(IdPage[RunObject]):
    pass


class RunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


class OutputItemObject(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any]

    @classmethod
    def of(cls, row: EvalOutputItem, eval_id: str) -> OutputItemObject:
        return cls(
            id=row.id,
            run_id=row.run_id,
            eval_id=eval_id,
            created_at=row.created_at,
            status=row.status,
            datasource_item_id=row.datasource_item_id,
            datasource_item=row.datasource_item,
            results=row.results,
            sample=row.sample,
        )


class OutputItemList(IdPage[OutputItemObject]):
    pass
