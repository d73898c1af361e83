"""ORM tables. Every user-visible object belongs to a project; `seq` orders lists stably."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from service.core.db import Base

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
SeqType = BigInteger().with_variant(Integer(), "sqlite")
# Python None is stored as SQL NULL (not JSON null), so "IS NULL" filters work.
NullableJSON = JSON(none_as_null=True)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # An admin key may also manage its project's sharing (checkpoint permissions).
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class File(Base):
    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(32), default="processed")
    storage_key: Mapped[str] = mapped_column(String(1024))
    __table_args__ = (Index("ix_files_project_seq", "project_id", "seq"),)


class Upload(Base):
    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    mime_type: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    file_expires_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class UploadPart(Base):
    __tablename__ = "upload_parts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(1024))


class FineTuningJob(Base):
    __tablename__ = "fine_tuning_jobs"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(256))  # the base model, also for a continued job
    # Continued fine-tuning: the fine-tuned model or checkpoint the job starts from (the
    # `model` the API shows); None for a job that starts from its base.
    parent_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The method as the API shows it, hyperparameters included ("auto" until resolved).
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Tailor's own extras (LoRA rank, alpha, dropout...), passed by clients in extra_body.
    extra_hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", NullableJSON, nullable=True)
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(NullableJSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The arq queue the job was put on; workers requeue only their own queue's jobs.
    queue: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Lease held by the worker running the job (at-least-once delivery; see ARCHITECTURE.md).
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Tailor's extension: the tuned model measured against its base once the job succeeded
    # (service/evals/after_training.py); the status alone is what the eval worker queries.
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    evaluation_status: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    __table_args__ = (Index("ix_fine_tuning_jobs_project_seq", "project_id", "seq"),)


class FineTuningEvent(Base):
    __tablename__ = "fine_tuning_events"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    __table_args__ = (Index("ix_fine_tuning_events_job_seq", "job_id", "seq"),)


class FineTuningCheckpoint(Base):
    __tablename__ = "fine_tuning_checkpoints"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512), unique=True)
    step_number: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    storage_key: Mapped[str] = mapped_column(String(1024))
    __table_args__ = (Index("ix_fine_tuning_checkpoints_job_seq", "job_id", "seq"),)


class FineTunedModel(Base):
    """A servable adapter: a job's final model or one of its checkpoints."""

    __tablename__ = "fine_tuned_models"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(512), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    base_model: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16))  # "final" or "checkpoint"
    storage_key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[int] = mapped_column(BigInteger)


class IdempotencyKey(Base):
    """A creating request's `Idempotency-Key` and, once it succeeded, its answer (api/idempotency.py)."""

    __tablename__ = "idempotency_keys"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)


class Eval(Base):
    """An eval: the shape of its items and its testing criteria, both as the API shows them."""

    __tablename__ = "evals"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", NullableJSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (Index("ix_evals_project_seq", "project_id", "seq"),)


class EvalRun(Base):
    """One run of an eval on a data source; the counters are the worker's running totals."""

    __tablename__ = "eval_runs"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))
    model: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(32), index=True)
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", NullableJSON, nullable=True)
    report_url: Mapped[str] = mapped_column(String(1024))
    result_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    per_model_usage: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    per_testing_criteria_results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Lease of the eval worker running it (at-least-once delivery, as training jobs).
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    __table_args__ = (Index("ix_eval_runs_eval_seq", "eval_id", "seq"),)


class EvalOutputItem(Base):
    """One graded item of a run, keyed by its place in the data: written once, whoever writes it."""

    __tablename__ = "eval_output_items"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    datasource_item_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    datasource_item: Mapped[dict[str, Any]] = mapped_column(JSON)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    sample: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Tokens per model (the generation and every judge), summed into the run's per_model_usage.
    usage: Mapped[dict[str, dict[str, int]]] = mapped_column(JSON, default=dict)
    created_at: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        Index("ux_eval_output_items_run_item", "run_id", "datasource_item_id", unique=True),
        Index("ix_eval_output_items_run_seq", "run_id", "seq"),
    )


class WebhookEndpoint(Base):
    """Where a project's webhooks go, and the `whsec_` secret they are signed with."""

    __tablename__ = "webhook_endpoints"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    # Event types it wants; empty: every type.
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """The outbox: one event for one endpoint, written in the transaction that caused it and
    kept until delivered (or given up on). Its id is the `webhook-id` of every attempt."""

    __tablename__ = "webhook_deliveries"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    # A sender's claim on the row while its attempt is in flight (several API processes).
    claimed_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)


class CheckpointPermission(Base):
    """A project's fine-tuned model or checkpoint shared with another project, which may then
    serve it; deleting the model (or the permission) ends the sharing."""

    __tablename__ = "checkpoint_permissions"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("fine_tuned_models.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))  # the grantee
    created_at: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (Index("ux_checkpoint_permissions_model_project", "model_id", "project_id", unique=True),)
