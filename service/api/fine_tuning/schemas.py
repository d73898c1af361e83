"""Request and response shapes of the fine-tuning API (OpenAI spec: CreateFineTuningJobRequest,
FineTuningJob, FineTuningJobEvent, FineTuningJobCheckpoint)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from service.api.fields import RequestBody, absent_if_none
from service.api.pagination import IdPage, Page
from service.core.tables import FineTuningCheckpoint, FineTuningEvent, FineTuningJob

Auto = Literal["auto"]
# Strict: "3" is not 3; the spec types these as numbers or the literal "auto".
BatchSize = Auto | Annotated[int, Field(ge=1, le=256, strict=True)]
LearningRateMultiplier = Auto | Annotated[float, Field(gt=0, strict=True)]
NEpochs = Auto | Annotated[int, Field(ge=1, le=50, strict=True)]
Beta = Auto | Annotated[float, Field(gt=0, le=2, strict=True)]

SUFFIX_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
METADATA_MAX_PAIRS = 16


class Hyperparameters(RequestBody):
    batch_size: BatchSize = "auto"
    learning_rate_multiplier: LearningRateMultiplier = "auto"
    n_epochs: NEpochs = "auto"


class DpoHyperparameters(Hyperparameters):
    beta: Beta = "auto"


class SupervisedMethod(RequestBody):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class DpoMethod(RequestBody):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(RequestBody):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_config(self) -> Method:
        for other in ("supervised", "dpo", "reinforcement"):
            if other != self.type and getattr(self, other) is not None:
                raise ValueError(f"method.{other} was given but method.type is '{self.type}'")
        return self


class WandbIntegrationConfig(RequestBody):
    project: str
    name: str | None = None
    entity: str | None = None
    tags: list[str] | None = None


class Integration(RequestBody):
    type: Literal["wandb"]
    wandb: WandbIntegrationConfig


class LoraConfig(RequestBody):
    """Tailor's extension, sent as `extra_body={"lora": {...}}`: the adapter's shape."""

    rank: int = Field(16, ge=1, le=256, description="LoRA rank r.")
    alpha: int = Field(32, ge=1, le=1024, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")


class TrainingOptions(RequestBody):
    """Tailor's extension, sent as `extra_body={"training": {...}}`: how the worker trains."""

    qlora: bool = Field(False, description="Load the base model in 4-bit NF4 (QLoRA); needs a CUDA worker.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations: less GPU memory, slower.")


class FineTuningJobCreate(RequestBody):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(None, min_length=1, max_length=64)
    validation_file: str | None = None
    integrations: list[Integration] | None = Field(None, max_length=5)
    seed: int | None = Field(None, ge=0, le=2147483647, strict=True)
    method: Method | None = None
    metadata: dict[str, str] | None = None
    lora: LoraConfig | None = None
    training: TrainingOptions | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix_charset(cls, v: str | None) -> str | None:
        if v is not None and not SUFFIX_PATTERN.match(v):
            raise ValueError("suffix may contain only letters, digits, '.', '_' and '-'")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > METADATA_MAX_PAIRS:
            raise ValueError(f"metadata may hold at most {METADATA_MAX_PAIRS} pairs")
        for key, value in v.items():
            if len(key) > 64:
                raise ValueError(f"metadata key '{key[:20]}…' is longer than 64 characters")
            if len(value) > 512:
                raise ValueError(f"metadata value for '{key}' is longer than 512 characters")
        return v


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class MethodObject(BaseModel):
    """The method as a job shows it: its type and that type's hyperparameters ("auto" until
    the worker resolves them)."""

    type: Literal["supervised", "dpo"]
    supervised: SupervisedMethod | None = absent_if_none()
    dpo: DpoMethod | None = absent_if_none()

    @property
    def hyperparameters(self) -> Hyperparameters:
        config = self.dpo if self.type == "dpo" else self.supervised
        assert config is not None, "a job's method holds its type's configuration"
        return config.hyperparameters


class FineTuningJobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: DpoHyperparameters | Hyperparameters  # deprecated: the method's, repeated
    model: str
    organization_id: str
    result_files: list[str]
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[Integration] | None
    seed: int
    estimated_finish: int | None
    method: MethodObject
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    lora: LoraConfig | None = None
    training: TrainingOptions | None = None

    @classmethod
    def of(cls, row: FineTuningJob) -> FineTuningJobObject:
        method = MethodObject.model_validate(row.method)
        extra = row.extra_hyperparameters or {}
        return cls(
            id=row.id,
            created_at=row.created_at,
            error=JobError.model_validate(row.error) if row.error else None,
            fine_tuned_model=row.fine_tuned_model,
            finished_at=row.finished_at,
            hyperparameters=method.hyperparameters,
            model=row.model,
            organization_id=row.project_id,
            result_files=list(row.result_files or []),
            status=row.status,
            trained_tokens=row.trained_tokens,
            training_file=row.training_file,
            validation_file=row.validation_file,
            integrations=[Integration.model_validate(i) for i in row.integrations] if row.integrations else None,
            seed=row.seed,
            estimated_finish=row.estimated_finish,
            method=method,
            metadata=row.metadata_,
            user_provided_suffix=row.suffix,
            lora=extra.get("lora"),
            training=extra.get("training"),
        )


class FineTuningJobList(Page[FineTuningJobObject]):
    pass


class FineTuningEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, row: FineTuningEvent) -> FineTuningEventObject:
        return cls(
            id=row.id,
            created_at=row.created_at,
            level=row.level,
            message=row.message,
            type=row.type,
            data=row.data or {},
        )


class FineTuningEventList(Page[FineTuningEventObject]):
    pass


class FineTuningCheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float]

    @classmethod
    def of(cls, row: FineTuningCheckpoint) -> FineTuningCheckpointObject:
        return cls(
            id=row.id,
            created_at=row.created_at,
            fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint,
            fine_tuning_job_id=row.job_id,
            step_number=row.step_number,
            metrics=row.metrics,
        )


class FineTuningCheckpointList(IdPage[FineTuningCheckpointObject]):
    pass
