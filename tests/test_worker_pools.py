"""Worker pools: which queue a job goes to, from what its base model needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core.errors import InvalidRequest
from service.core.registry import RegistryError, load_registry
from service.core.settings import Settings, WorkerPool
from service.jobs.queue import queue_for

CPU = WorkerPool(queue="cpu")
A10 = WorkerPool(queue="a10", gpu_memory_gb=24, gpu_count=1)
A100 = WorkerPool(queue="a100", gpu_memory_gb=80, gpu_count=1)
A100X8 = WorkerPool(queue="a100x8", gpu_memory_gb=80, gpu_count=8)
POOLS = [A100X8, A100, CPU, A10]


def registry(tmp_path: Path, *entries: dict[str, object]) -> dict[str, object]:
    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"source": "hf_dir", "location": "/models/x", **e} for e in entries]))
    return load_registry(path)  # type: ignore[return-value]


def test_the_smallest_pool_that_fits_takes_the_job(tmp_path: Path) -> None:
    models = registry(
        tmp_path,
        {"name": "small"},
        {"name": "7b", "gpu_memory_gb": 20, "gpu_count": 1},
        {"name": "13b", "gpu_memory_gb": 40, "gpu_count": 1},
        {"name": "70b", "gpu_memory_gb": 80, "gpu_count": 4},
    )
    chosen = {name: queue_for(models[name], POOLS, "default") for name in ("small", "7b", "13b", "70b")}  # type: ignore[arg-type]
    assert chosen == {"small": "cpu", "7b": "a10", "13b": "a100", "70b": "a100x8"}


def test_without_pools_every_job_goes_to_the_default_queue(tmp_path: Path) -> None:
    models = registry(tmp_path, {"name": "70b", "gpu_memory_gb": 80, "gpu_count": 4})
    assert queue_for(models["70b"], [], "tailor:queue") == "tailor:queue"  # type: ignore[arg-type]


def test_a_model_may_name_its_queue(tmp_path: Path) -> None:
    models = registry(tmp_path, {"name": "pinned", "queue": "special", "gpu_count": 64})
    assert queue_for(models["pinned"], POOLS, "default") == "special"  # type: ignore[arg-type]


def test_no_pool_big_enough_is_a_clear_400(tmp_path: Path) -> None:
    models = registry(tmp_path, {"name": "405b", "gpu_memory_gb": 80, "gpu_count": 16})
    with pytest.raises(InvalidRequest) as exc:
        queue_for(models["405b"], POOLS, "default")  # type: ignore[arg-type]
    assert exc.value.param == "model"
    assert "405b" in exc.value.message and "a100x8: 8 x 80 GB" in exc.value.message


@pytest.mark.parametrize("bad", [{"gpu_count": -1}, {"gpu_memory_gb": "lots"}])
def test_registry_refuses_bad_needs(tmp_path: Path, bad: dict[str, object]) -> None:
    with pytest.raises(RegistryError, match="entry 0"):
        registry(tmp_path, {"name": "x", **bad})


def test_pools_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_WORKER_POOLS", json.dumps([{"queue": "a100", "gpu_memory_gb": 80, "gpu_count": 1}]))
    assert Settings().worker_pools == [A100]
