"""One settings class for the whole service, read from `TAILOR_*` variables and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerPool(BaseModel):
    """Workers that take jobs from one queue, and what each of them owns."""

    queue: str = Field(min_length=1, description="arq queue the pool's workers take jobs from (tailor worker --queue).")
    gpu_memory_gb: float = Field(0, ge=0, description="GPU memory of each of the worker's GPUs; 0 for CPU workers.")
    gpu_count: int = Field(0, ge=0, description="GPUs each worker owns; a job may use all of them (torchrun).")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAILOR_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development", description="`production` refuses the embedded defaults (SQLite, local store)."
    )
    data_dir: Path = Field(Path(".tailor"), description="Where the embedded SQLite file and local store live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy async URL, e.g. postgresql+asyncpg://user@host/db. Default: SQLite in data_dir."
    )
    storage_url: str | None = Field(None, description="file:///path or s3://bucket/prefix. Default: file://{data_dir}/objects.")
    max_concurrent_requests: int = Field(
        16,
        ge=0,
        description="Reads and deletes one API process runs at once; more wait in arrival order (0: no bound). "
        "Chat, uploads and file downloads are never held back.",
    )
    database_pool_size: int = Field(
        10, ge=1, description="Database connections each API process keeps open (a request holds one while it runs)."
    )
    database_max_overflow: int = Field(
        20, ge=0, description="More connections an API process may open under load, closed when idle again."
    )
    migrate_on_start: bool = Field(
        True, description="Apply database migrations when serve or worker starts; clusters run `tailor migrate` once instead."
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, Ceph RGW); unset for AWS S3.")
    s3_region: str | None = Field(None, description="S3 region name.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the arq work queue.")
    queue_name: str = Field("tailor:queue", description="arq queue that fine-tuning jobs go to.")
    max_upload_bytes: int = Field(512 * 1024 * 1024, description="Largest file accepted by POST /v1/files.")
    max_upload_part_bytes: int = Field(64 * 1024 * 1024, description="Largest part of the Uploads API.")
    max_upload_total_bytes: int = Field(8 * 1024**3, description="Largest file assembled by the Uploads API.")
    upload_expiry_seconds: int = Field(3600, description="An unfinished Upload expires after this long.")
    base_models_file: Path | None = Field(
        None, description="YAML or JSON list of extra base models (name, source, path, context_length)."
    )
    model_cache_dir: Path | None = Field(
        None, description="Where base models are converted and cached. Default: {data_dir}/models."
    )
    work_dir: Path | None = Field(None, description="Scratch space of a worker. Default: {data_dir}/work.")
    rate_limit_per_minute: int = Field(
        6000, ge=0, description="Requests per minute one API key may make (all replicas together, through Redis); 0: no limit."
    )
    metrics_token: str | None = Field(
        None, description="When set, GET /metrics needs `Authorization: Bearer <token>` (else it is open: keep it internal)."
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins a browser may call the API from (CORS). Empty (the default): none but the API's own.",
    )
    reconcile_interval_seconds: float = Field(
        5.0, gt=0, description="How often the API enqueues jobs whose rows say they wait (Redis was away)."
    )
    janitor_interval_seconds: float = Field(
        600.0, gt=0, description="How often the API removes expired files and uploads, orphaned objects and scratch files."
    )
    janitor_grace_seconds: float = Field(
        3600.0, ge=0, description="An object or scratch file younger than this is never taken for an orphan."
    )
    lease_seconds: int = Field(
        60, ge=5, description="A running job whose worker has not renewed its lease for this long is requeued."
    )
    checkpoint_interval_seconds: float = Field(
        600.0,
        ge=0,
        description="A job checkpoints at least this often besides every epoch, so a crash loses no more; 0: epochs only.",
    )
    device: str = Field("auto", description="Training device: auto, cpu, cuda, cuda:N.")
    train_processes: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Processes one job trains in, data-parallel (one per GPU). Default: on CUDA, "
        "the GPUs its base model needs (gpu_count), as many as the worker has; on CPU, 1.",
    )
    worker_pools: list[WorkerPool] = Field(
        default_factory=list,
        description='JSON list of worker pools, e.g. [{"queue": "tailor:a100x8", "gpu_memory_gb": 80, "gpu_count": 8}]. '
        "A job goes to the smallest pool that fits its base model's needs; none set: every job goes to queue_name.",
    )

    # --- Evaluations: `tailor eval-worker` runs eval runs and graders/run off the request path ---
    eval_queue_name: str = Field("tailor:evals", description="arq queue that eval runs and grader runs go to.")
    eval_concurrency: int = Field(
        8, ge=1, le=256, description="Generations (and model-grader calls) one eval run keeps in flight at once."
    )
    public_url: str = Field(
        "http://127.0.0.1:8000", description="Where clients reach the API; the report_url of runs an eval worker creates."
    )
    evaluation_wait_seconds: float = Field(
        900.0,
        ge=0,
        description="How long a succeeded job's evaluation waits for an inference server of its base before it is skipped.",
    )
    eval_max_items: int = Field(10_000, ge=1, description="Most items one eval run may hold.")
    grader_run_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest POST /v1/fine_tuning/alpha/graders/run waits for an eval worker's answer."
    )
    judge_base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint (…/v1) for score_model and label_model judges that Tailor does not serve; "
        "unset: judges must be models Tailor serves.",
    )
    judge_api_key: str | None = Field(None, description="API key sent to judge_base_url.")
    python_grader: bool = Field(
        False, description="Allow `python` graders (each grade runs in a fresh sandboxed process); off by default."
    )
    python_grader_timeout_seconds: float = Field(10.0, gt=0, le=600, description="Wall-clock limit of one python grade.")
    python_grader_memory_mib: int = Field(512, ge=32, description="Memory limit of one python grade's sandbox.")
    embedding_model_path: Path | None = Field(
        None, description="Local sentence-embedding model directory for the cosine metric. Default: the packaged one."
    )

    # --- Webhooks (service/webhooks): endpoints per project, delivered from the outbox by the API ---
    webhook_allow_private_addresses: bool = Field(
        False,
        description="Deliver to loopback, link-local and private addresses too (off: a webhook is no way into your network).",
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="Longest wait for an endpoint to answer one delivery attempt.")
    webhook_retry_base_seconds: float = Field(
        5.0, gt=0, description="Wait before the first retry; each next retry waits about three times longer."
    )
    webhook_retry_for_seconds: float = Field(
        86400.0, gt=0, description="A delivery still failing this long after its event is given up on."
    )
    webhook_concurrency: int = Field(16, ge=1, description="Delivery attempts one API process keeps in flight.")

    # --- Observability ---
    log_format: Literal["text", "json"] = Field("text", description="`json`: one JSON object per log line, with the request id.")
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Port of a worker's Prometheus /metrics (and /health); unset: not served."
    )

    @model_validator(mode="after")
    def _refuse_embedded_defaults_in_production(self) -> Settings:
        if self.environment == "production":
            missing = [n for n in ("database_url", "storage_url") if getattr(self, n) is None]
            if missing:
                names = ", ".join(f"TAILOR_{n.upper()}" for n in missing)
                raise ValueError(f"production needs {names}: the embedded SQLite file and local store are for development")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tailor.db').resolve()}"

    @property
    def resolved_model_cache_dir(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "models").resolve()

    @property
    def resolved_work_dir(self) -> Path:
        return (self.work_dir or self.data_dir / "work").resolve()

    @property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "objects").resolve().as_uri()

    # --- Inference: `tailor inference` (vLLM servers) and the chat gateway in front of them ---
    inference_urls: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Base model name -> root URLs of the vLLM servers (replicas) that serve it, e.g. "
        '{"SmolLM2-135M-Instruct": ["http://10.0.0.5:8100", "http://10.0.0.6:8100"]}. A base model not '
        "named here is served by `tailor inference` at inference_host:inference_port+i (i: its place in the registry).",
    )
    inference_host: str = Field("127.0.0.1", description="Address `tailor inference` binds its vLLM servers to.")
    inference_port: int = Field(8100, ge=1, le=65535, description="Port of the first base model's vLLM server.")
    inference_models: list[str] | None = Field(
        None, description="Base models `tailor inference` serves. Default: every registered base model."
    )
    inference_api_key: str | None = Field(
        None, description="Shared secret the gateway sends to vLLM (vLLM's --api-key); set it when vLLM listens beyond loopback."
    )
    inference_timeout_seconds: float = Field(
        600.0, gt=0, description="Longest wait on vLLM: a whole non-streamed answer, or the gap between two streamed chunks."
    )
    inference_connect_timeout_seconds: float = Field(5.0, gt=0, description="Longest wait to connect to a vLLM server.")
    vllm_python: Path | None = Field(
        None, description="Python of vLLM's own virtualenv. Default: .venv-vllm/bin/python in the checkout (`make setup-vllm`)."
    )
    # 8 and 32, as the Kubernetes manifests: bench/serve_load.py ("Many adapters") measured
    # 16 streams over 32 adapters at +31 % tokens/s and 36 % less time to first token than 4 and 4.
    vllm_max_loras: int = Field(8, ge=1, description="Adapters one vLLM batch may mix (--max-loras).")
    vllm_max_cpu_loras: int | None = Field(
        32, ge=1, description="Adapters vLLM keeps loaded in host memory (--max-cpu-loras); unset: --max-loras."
    )
    vllm_max_lora_rank: int = Field(
        16,
        ge=1,
        description="Largest LoRA rank vLLM serves (--max-lora-rank: 8, 16, 32, 64, 128, 256). Raise it to serve adapters "
        "trained with a larger rank; on CPU every LoRA request pays for the largest rank.",
    )
    vllm_kv_cache_bytes: int | None = Field(
        None,
        ge=1,
        description="KV cache size per vLLM server (--kv-cache-memory-bytes). Default: 2 GiB on CPU, vLLM's own on GPU.",
    )
    vllm_extra_args: list[str] = Field(default_factory=list, description='More vLLM flags, e.g. ["--max-model-len", "4096"].')
    vllm_ready_timeout_seconds: float = Field(600.0, gt=0, description="How long `tailor inference` waits for vLLM to be ready.")
    adapter_cache_dir: Path | None = Field(
        None, description="Each vLLM server's local cache of adapters. Default: {data_dir}/adapter-cache."
    )
    adapter_cache_max_bytes: int = Field(
        10 * 1024**3,
        ge=1,
        description="Bound of the adapter cache; past it, least recently used adapters are unloaded and deleted.",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
