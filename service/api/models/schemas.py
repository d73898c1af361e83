"""Shapes of the Models API (OpenAI spec: Model, ListModelsResponse, DeleteModelResponse)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from service.core.registry import BaseModelSpec
from service.core.tables import FineTunedModel


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str

    @classmethod
    def of_base(cls, spec: BaseModelSpec) -> ModelObject:
        return cls(id=spec.name, created=spec.created, owned_by=spec.owned_by)

    @classmethod
    def of_fine_tuned(cls, row: FineTunedModel) -> ModelObject:
        return cls(id=row.id, created=row.created_at, owned_by=row.project_id)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
