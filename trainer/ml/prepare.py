"""From a job's files to what training needs: the datasets (validation held out of the
training file when the job has none), the resolved hyperparameters and the data report.
One path for the training child, `tailor data check` and bench/quality.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.ml import report
from trainer.ml.config import Resolved, TrainConfig, resolve_auto, validation_count
from trainer.ml.data import Dataset, load_dataset, split_validation


@dataclass
class Prepared:
    train: Dataset
    valid: Dataset | None
    resolved: Resolved
    validation: dict[str, Any] | None  # where validation comes from, for the report
    warnings: list[str]  # the datasets' own (truncation, skipped examples)

    def report(self, tokens_per_second: float | None = None) -> dict[str, Any]:
        return report.build(
            self.train, n_epochs=self.resolved.n_epochs, validation=self.validation, tokens_per_second=tokens_per_second
        )

    def split_message(self) -> str | None:
        v = self.validation
        if not v or v["source"] != "split":
            return None
        return (
            f"No validation file: held out {v['held_out']} of {v['of']} examples ({100 * v['held_out'] / v['of']:.0f}%, "
            f"seed {v['seed']}) as validation; set training.validation_split to 0 to train on all of them"
        )


def prepare(
    config: TrainConfig,
    tokenizer: Any,
    max_len: int,
    training_file: Path,
    validation_file: Path | None,
    device_type: str = "cpu",
) -> Prepared:
    train = load_dataset(training_file, tokenizer, config.method, max_len, "training")
    valid = load_dataset(validation_file, tokenizer, config.method, max_len, "validation") if validation_file else None
    validation = {"source": "file", "examples": len(valid)} if valid else None
    if valid is None and (held := validation_count(len(train), config.validation_split)):
        n = len(train)
        train, valid = split_validation(train, held, config.seed)
        validation = {"source": "split", "held_out": len(valid), "of": n, "seed": config.seed}
    warnings = [w for _, w in train.warnings] + [w for _, w in (valid.warnings if valid else [])]
    return Prepared(train, valid, resolve_auto(config, len(train), device_type), validation, warnings)
