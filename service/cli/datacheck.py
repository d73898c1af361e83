"""`tailor data check`: the data report a job shows at `validating_files`, offline, before
any upload (trainer/ml/prepare.py and report.py; the same code the worker runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from service.core.registry import BaseModelSpec


def check(
    spec: BaseModelSpec,
    cache_dir: Path,
    training_file: Path,
    validation_file: Path | None,
    method: str,
    options: dict[str, Any],
    measure: bool,
) -> dict[str, Any]:
    """The report; raises trainer's DatasetError (or ConfigError) for a file that cannot train."""
    from trainer.ml.base_model import load_tokenizer, materialize
    from trainer.ml.config import TrainConfig
    from trainer.ml.prepare import prepare
    from trainer.ml.train import context_length, measured_speed

    model_path = materialize(spec, cache_dir)
    config = TrainConfig(method=method, device="cpu", **options)  # type: ignore[arg-type]
    max_len = min(spec.context_length or 2048, context_length(model_path))
    data = prepare(config, load_tokenizer(model_path), max_len, training_file, validation_file)
    speed = measured_speed(config, model_path, data.train) if measure else None
    found = data.report(speed)
    found["dataset_warnings"] = data.warnings
    found["validation_message"] = data.split_message()
    return found


def print_report(found: dict[str, Any], as_json: bool) -> None:
    from trainer.ml import report

    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(report.summary(found))
    if found["validation_message"]:
        click.echo(found["validation_message"])
    for warning in found["dataset_warnings"] + found["warnings"]:
        click.echo(f"warning: {warning}")
    if found["estimated_seconds"] is None:
        click.echo("duration: not measured (--measure times one training step of the base model on this machine)")
