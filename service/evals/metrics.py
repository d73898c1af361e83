"""An eval worker's Prometheus metrics, served on TAILOR_WORKER_METRICS_PORT like a trainer
worker's (`/metrics`, and `/health`, which answers 503 once the reaper loop has stalled)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.core.metrics import new_registry

# The reaper runs every lease/3 seconds (20 s by default); three missed passes is a stall.
STALL_SECONDS = 120.0


class EvalMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry()
        self.runs = Counter("tailor_eval_runs", "Eval runs this worker ended, by outcome.", ["outcome"], registry=self.registry)
        self.items = Counter(
            "tailor_eval_output_items", "Output items this worker wrote, by status (pass, fail, error).", ["status"],
            registry=self.registry,
        )  # fmt: skip
        self.in_progress = Gauge(
            "tailor_eval_runs_in_progress", "Eval runs this worker is executing now.", registry=self.registry
        )
        self.grader_calls = Counter(
            "tailor_eval_grader_requests", "graders/run requests answered, by outcome (ok, refused).", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.last_pass = time.monotonic()

    def reaper_passed(self) -> None:
        self.last_pass = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self.last_pass < STALL_SECONDS
