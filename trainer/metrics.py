"""A worker's Prometheus metrics: job outcomes and durations, jobs in progress and training
throughput, served on TAILOR_WORKER_METRICS_PORT (`/metrics` and `/health`, core/metrics.py)."""

from __future__ import annotations

from functools import lru_cache
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.core.metrics import new_registry, serve_metrics
from trainer.outcome import Outcome

JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry()
        self.jobs = Counter(
            "tailor_worker_jobs", "Jobs this worker ran, by method and outcome.", ["method", "outcome"], registry=self.registry
        )
        self.job_duration = Histogram(
            "tailor_worker_job_duration_seconds",
            "Wall time of a job's run on this worker (one run: a paused or requeued job runs again), by method and outcome.",
            ["method", "outcome"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge("tailor_worker_jobs_in_progress", "Jobs this worker is running now.", registry=self.registry)
        self.tokens_per_second = Gauge(
            "tailor_worker_training_tokens_per_second",
            "Training throughput: tokens per second over the latest step, summed over the jobs running now.",
            registry=self.registry,
        )
        self.trained_tokens = Counter(
            "tailor_worker_trained_tokens", "Tokens trained on by this worker, by method.", ["method"], registry=self.registry
        )
        self._rates: dict[str, float] = {}

    def job_started(self) -> None:
        self.in_progress.inc()

    def job_finished(self, job_id: str, method: str, outcome: Outcome, seconds: float) -> None:
        self.in_progress.dec()
        self.jobs.labels(method, outcome.value).inc()
        self.job_duration.labels(method, outcome.value).observe(seconds)
        self._rates.pop(job_id, None)
        self.tokens_per_second.set(sum(self._rates.values()))

    def step(self, job_id: str, method: str, tokens: int, seconds: float | None) -> None:
        """`tokens` trained since the previous step report, `seconds` since it (None: unknown)."""
        if tokens > 0:
            self.trained_tokens.labels(method).inc(tokens)
        if seconds and seconds > 0:
            self._rates[job_id] = tokens / seconds
            self.tokens_per_second.set(sum(self._rates.values()))


@lru_cache
def worker_metrics() -> WorkerMetrics:
    """This process's worker metrics (what `serve_worker_metrics` shows by default)."""
    return WorkerMetrics()


def serve_worker_metrics(port: int, host: str = "0.0.0.0", metrics: WorkerMetrics | None = None) -> WSGIServer:
    """Serve /metrics and /health on host:port from a daemon thread; `.shutdown()` stops it.
    0.0.0.0 by default: a scraper (a pod's Prometheus) reaches the worker from outside."""
    return serve_metrics(port, (metrics or worker_metrics()).registry, host=host, name="tailor-worker-metrics")
