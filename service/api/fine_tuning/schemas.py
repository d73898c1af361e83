"""Request and response shapes of the fine-tuning API (OpenAI spec: CreateFineTuningJobRequest,
FineTuningJob, FineTuningJobEvent, FineTuningJobCheckpoint)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from service.api.fields import Metadata, RequestBody, absent_if_none
from service.api.pagination import IdPage, Page
from service.core.tables import FineTuningCheckpoint, FineTuningEvent, FineTuningJob

Auto = Literal["auto"]
# Strict: "3" is not 3; the spec types these as numbers or the literal "auto".
BatchSize = Auto | Annotated[int, Field(ge=1, le=256, strict=True)]
LearningRateMultiplier = Auto | Annotated[float, Field(gt=0, strict=True)]
NEpochs = Auto | Annotated[int, Field(ge=1, le=50, strict=True)]
Beta = Auto | Annotated[float, Field(gt=0, le=2, strict=True)]

SUFFIX_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


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
    validation_split: Literal["auto"] | Annotated[float, Field(ge=0, le=0.5)] = Field(
        "auto",
        description="With no validation_file: the share of the training file held out as validation "
        "(auto: 10%, at most 200, for files of 50 examples or more); 0 turns it off.",
    )
    early_stopping_patience: Literal["auto"] | Annotated[int, Field(ge=0, le=50, strict=True)] = Field(
        "auto",
        description="Epochs without a lower full_valid_loss before training stops (auto: 2); 0 turns it off. "
        "The checkpoint with the lowest full_valid_loss becomes the fine-tuned model.",
    )
    replay: Literal["auto"] | bool = Field(
        "auto",
        description="Mix the base model's own answers to general prompts into each step, against forgetting "
        "(auto: on for supervised jobs).",
    )


class EvaluationOptions(RequestBody):
    """Tailor's extension, sent as `extra_body={"evaluation": {...}}`: once the job succeeds,
    the tuned model is measured against its base (service/evals/after_training.py)."""

    test_file: str | None = Field(
        None,
        description="A chat-format file (purpose fine-tune) the job never trains on; each example's last assistant "
        "message is the reference answer.",
    )
    testing_criteria: list[dict[str, Any]] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="Graders on {{item.reference}} and {{sample.output_text}}. "
        "Default: an exact check and a fuzzy similarity (>= 0.8).",
    )
    general_knowledge: bool = Field(True, description="Also check the tuned model did not forget what its base knew.")
    max_tokens: int = Field(256, ge=1, le=4096, description="Longest answer generated per test item.")


class FineTuningJobCreate(RequestBody):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(None, min_length=1, max_length=64)
    validation_file: str | None = None
    integrations: list[Integration] | None = Field(None, max_length=5)
    seed: int | None = Field(None, ge=0, le=2147483647, strict=True)
    method: Method | None = None
    metadata: Metadata | None = None
    lora: LoraConfig | None = None
    training: TrainingOptions | None = None
    evaluation: EvaluationOptions | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix_charset(cls, v: str | None) -> str | None:
        if v is not None and not SUFFIX_PATTERN.match(v):
            raise ValueError("suffix may contain only letters, digits, '.', '_' and '-'")
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
    # Tailor's extension: what the job's evaluation found (absent when none was asked for).
    evaluation: dict[str, Any] | None = absent_if_none()

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
            model=row.parent_model or row.model,
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
            evaluation=row.evaluation,
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
