"""The training loop: supervised LoRA and DPO, with hooks for metrics, checkpoints and stop.

An optimizer step covers `batch_size` examples (OpenAI's meaning of batch size), split
into packed micro-batches by a token budget and accumulated. The loss is normalized over
the whole step (supervised: per trained token, replayed answers apart; DPO: per pair), so
the result does not depend on how the step was split. Example order is a permutation
seeded by (seed, epoch), and a checkpoint holds optimizer, scheduler and RNG states, so a
paused or requeued job resumes exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from trainer.ml import checkpoint as ckpt
from trainer.ml.base_model import load_for_training, load_tokenizer, resolve_device
from trainer.ml.chat_tokens import IGNORE
from trainer.ml.config import EARLY_STOPPING_MIN_DELTA, REPLAY_WEIGHT, TrainConfig, replay_count, resolve_auto
from trainer.ml.data import Dataset, load_dataset
from trainer.ml.lora import build_lora_model, lora_targets
from trainer.ml.losses import TokenScores, dpo_loss, pair_logprobs, score_targets, sequence_logprobs
from trainer.ml.packing import PackedBatch, collate, micro_batches, segment
from trainer.ml.parallel import Group
from trainer.ml.results import Hooks, StepMetrics, StopRequest, TrainResult

__all__ = [
    "StepMetrics", "StopRequest", "TrainConfig", "TrainResult", "build_lora_model", "lora_targets", "resolve_auto",
    "train", "train_files",
]  # fmt: skip


@dataclass
class _Best:
    """The lowest full_valid_loss so far, its step, and epochs since it last improved."""

    loss: float
    step: int
    bad_epochs: int = 0


def next_best(best: _Best | None, loss: float, step: int) -> _Best:
    """Early stopping's bookkeeping after an epoch's full validation. The kept checkpoint is
    the one with the lowest full_valid_loss; patience counts the epochs since the loss last
    fell by a small relative margin (noise is not progress)."""
    if best is None:
        return _Best(loss, step)
    progress = loss < best.loss * (1 - EARLY_STOPPING_MIN_DELTA)
    bad_epochs = 0 if progress else best.bad_epochs + 1
    return _Best(loss, step, bad_epochs) if loss < best.loss else _Best(best.loss, best.step, bad_epochs)


# How many of the highest-loss training examples a run reports.
HIGHEST_LOSS_EXAMPLES = 10


@dataclass
class _Measured:
    sums: dict[str, float]
    tokens: int
    norm: float


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


# What `_measure` sums per method, in one order for every process of a job.
_STAT_KEYS = {
    "supervised": ("loss", "correct", "targets"),
    "dpo": ("loss", "correct", "targets", "rewards_chosen", "rewards_rejected", "reward_accuracy", "pairs"),
}


class _Run:
    def __init__(
        self,
        config: TrainConfig,
        model_path: Path,
        train_data: Dataset,
        valid_data: Dataset | None,
        output_dir: Path,
        hooks: Hooks,
        base: Any = None,
        init_adapter: Path | None = None,
        replay: Callable[[Any], Dataset] | None = None,
    ):
        self.config, self.hooks, self.output_dir = config, hooks, output_dir
        self.train_data, self.valid_data = train_data, valid_data
        self.device = resolve_device(config.device)
        self.group = Group()  # the job's processes: one unless it trains data-parallel
        self.r = resolve_auto(config, len(train_data), self.device.type)
        torch.manual_seed(config.seed)  # LoRA init, then dropout
        if base is None:
            base = load_for_training(model_path, config.dtype, config.device, config.qlora)
        self.pad_id = int(base.config.pad_token_id if isinstance(base.config.pad_token_id, int) else 0)
        # Replayed examples sit after the user's in `steps_data`; a step adds a few of them.
        self.n_user = len(train_data)
        self.replay_count = 0
        self.steps_data = train_data
        if replay is not None and self.r.replay_share:
            extra = replay(base).examples  # the plain base model answers, before any adapter
            self.replay_count = len(extra)
            self.steps_data = Dataset(train_data.method, train_data.examples + extra)
        self.model = build_lora_model(base, config)
        if init_adapter is not None:  # continued fine-tuning: start from the parent job's adapter
            ckpt.load_adapter_weights(init_adapter, self.model)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.r.learning_rate, weight_decay=config.weight_decay)
        warmup = math.ceil(self.r.total_steps * config.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(warmup, self.r.total_steps))
        self.step, self.tokens, self.saved_step = 0, 0, -1
        self.saved_at = time.monotonic()  # the clock of `checkpoint_interval_seconds`
        # DPO reference log-probs per example: the base model never changes, so each is
        # computed once (adapter disabled) and reused in later epochs.
        self.ref_cache: dict[str, dict[int, tuple[float, float]]] = {"train": {}, "valid": {}}
        self.best: _Best | None = None
        self.stopped_early = False
        self.example_losses: dict[int, float] = {}  # user example index -> its latest training loss

    def fingerprint(self) -> dict[str, Any]:
        c, r = self.config, self.r
        return {
            "method": c.method,
            "n_examples": len(self.train_data),
            "n_tokens": self.train_data.n_tokens,
            "n_epochs": r.n_epochs,
            "batch_size": r.batch_size,
            "learning_rate": r.learning_rate,
            "beta": r.beta,
            "lora_rank": c.lora_rank,
            "lora_alpha": c.lora_alpha,
            "lora_dropout": c.lora_dropout,
            "seed": c.seed,
        }

    def resume(self, directory: Path) -> None:
        state = ckpt.restore(directory, self.model, self.optimizer, self.scheduler, self.fingerprint())
        self.step, self.tokens, self.saved_step = state.step, state.trained_tokens, state.step
        if state.best:
            self.best = _Best(float(state.best["loss"]), int(state.best["step"]), int(state.best["bad_epochs"]))

    def _poll(self) -> StopRequest:
        return self.hooks.should_stop() if self.hooks.should_stop else None

    def _step_units(self, step: int) -> list[int]:
        """Example indices of a step: a fixed permutation per (seed, epoch), so any step
        can be recomputed on resume without replaying the ones before it."""
        epoch, k = divmod(step, self.r.steps_per_epoch)
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n_user, generator=gen).tolist()
        units = order[k * self.r.batch_size : (k + 1) * self.r.batch_size]
        wanted = replay_count(step, self.r.batch_size, self.r.replay_share) if self.replay_count else 0
        if wanted:
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + 7_919 * (step + 1))
            picks = torch.randperm(self.replay_count, generator=gen)[:wanted].tolist()
            units += [self.n_user + p for p in picks]
        return units

    def _batches(self, data: Dataset, idxs: list[int]) -> list[PackedBatch]:
        examples = [data.examples[i] for i in idxs]
        out = []
        for group in micro_batches([e.n_tokens for e in examples], self.r.micro_batch_tokens):
            if data.method == "supervised":
                segs = [segment(examples[i].tokens, idxs[i]) for i in group]
            else:
                segs = [segment(examples[i].chosen, idxs[i], 0) for i in group]
                segs += [segment(examples[i].rejected, idxs[i], 1) for i in group]
            out.append(collate(segs, self.r.pack_len, self.pad_id))
        return out

    def _reference(self, batch: PackedBatch, cache: dict[int, tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        units = sorted({u for u, _ in batch.segments})
        if any(u not in cache for u in units):
            # Same weights, adapter switched off: the reference model without a second copy.
            with torch.no_grad(), self.model.disable_adapter():
                per_seg = sequence_logprobs(score_targets(self.model, batch), len(batch.segments))
            for u, (c, r) in pair_logprobs(batch, per_seg).items():
                cache[u] = (float(c), float(r))
        ref = torch.tensor([cache[u] for u in units], device=self.device)
        return ref[:, 0], ref[:, 1]

    def _replayed(self, batch: PackedBatch) -> torch.Tensor:
        """Per segment of a training batch, whether it is a replayed example (they follow the
        user's in `steps_data`), plus a last False that padding's segment id -1 picks."""
        return torch.tensor([u >= self.n_user for u, _ in batch.segments] + [False], device=batch.targets.device)

    def _replayed_targets(self, batch: PackedBatch) -> int:
        return int(((batch.targets != IGNORE) & self._replayed(batch)[batch.segment_ids]).sum())

    def _measure(
        self, batch: PackedBatch, cache: dict[int, tuple[float, float]], replay_scale: float | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's summed loss (to backpropagate) and its metric sums. `replay_scale`: a
        training batch, whose replayed tokens count that many times a user's; None: validation."""
        scores = score_targets(self.model, batch)
        if self.config.method == "supervised":
            if torch.is_grad_enabled():
                self._note_example_losses(batch, scores)
            # The figures a job reports are the user's examples' only: replayed answers are
            # trained on (in `loss`) but would make the curve jump with every one that joins.
            mine = torch.ones_like(scores.segment, dtype=torch.bool)
            if replay_scale is not None:
                mine = ~self._replayed(batch)[scores.segment]
            loss = -scores.logprobs[mine].sum() - (replay_scale or 0.0) * scores.logprobs[~mine].sum()
            return loss, {
                "loss": -scores.logprobs[mine].sum().item(),
                "correct": scores.correct[mine].sum().item(),
                "targets": int(mine.sum().item()),
            }
        ref_c, ref_r = self._reference(batch, cache)
        policy = pair_logprobs(batch, sequence_logprobs(scores, len(batch.segments)))
        units = sorted(policy)
        terms = dpo_loss(
            torch.stack([policy[u][0] for u in units]),
            torch.stack([policy[u][1] for u in units]),
            ref_c,
            ref_r,
            self.r.beta,
        )
        parts = torch.tensor([p for _, p in batch.segments], device=self.device)[scores.segment]
        chosen = parts == 0  # token accuracy is reported on the preferred replies
        loss = terms.loss.sum()
        return loss, {
            "loss": loss.item(),
            "correct": (scores.correct & chosen).sum().item(),
            "targets": chosen.sum().item(),
            "rewards_chosen": terms.chosen_reward.sum().item(),
            "rewards_rejected": terms.rejected_reward.sum().item(),
            "reward_accuracy": (terms.chosen_reward > terms.rejected_reward).sum().item(),
            "pairs": len(units),
        }

    def _note_example_losses(self, batch: PackedBatch, scores: TokenScores) -> None:
        """Each training example's mean token loss at its latest step (free: the step computed
        it), or measured after training, for the report's highest-loss examples."""
        n = len(batch.segments)
        nll = torch.zeros(n, device=scores.logprobs.device).index_add_(0, scores.segment, -scores.logprobs.detach().float())
        count = torch.zeros(n, device=nll.device).index_add_(0, scores.segment, torch.ones_like(nll[scores.segment]))
        for (unit, _), total, k in zip(batch.segments, nll.tolist(), count.tolist(), strict=True):
            if unit < self.n_user and k:
                self.example_losses[unit] = total / k

    def _pass(self, data: Dataset, idxs: list[int], cache: dict[int, tuple[float, float]], learn: bool) -> _Measured | str:
        packed = self._batches(data, idxs)
        norm, replay_scale = len(idxs), None
        if data.method == "supervised":
            # The mean per trained token of the user's examples, plus the replayed ones' mean at
            # REPLAY_WEIGHT (one mean over both would let long replayed answers drown short labels).
            replayed = sum(self._replayed_targets(b) for b in packed) if learn and self.replay_count else 0
            norm = max(1, sum(b.n_targets for b in packed) - replayed)
            if learn:
                replay_scale = REPLAY_WEIGHT * norm / replayed if replayed else 0.0
        # Training steps are shared among the job's processes; evaluation is run whole by each.
        shared = learn and self.group.active
        mine = self.group.mine(len(packed)) if shared else range(len(packed))
        sums: dict[str, float] = defaultdict(float)
        for k in mine:
            # Mid-step stop requests only when alone: processes may only stop together.
            if learn and not shared and k > 0 and (stop := self._poll()) is not None:
                return stop  # cancel or pause mid-step: the partial gradients are dropped
            with torch.set_grad_enabled(learn):
                loss, stats = self._measure(packed[k].to(self.device), cache, replay_scale)
            if learn:
                (loss / norm).backward()
            for key, value in stats.items():
                sums[key] += value
        if shared:
            self.group.sum_gradients(self.params)
            sums = self.group.sum_stats(sums, _STAT_KEYS[data.method], self.device)
        return _Measured(sums=dict(sums), tokens=sum(b.n_tokens for b in packed), norm=norm)

    def _summary(self, m: _Measured) -> tuple[float, float, dict[str, float]]:
        # Supervised: per trained token of the user's examples (replayed ones are not in the
        # sums); DPO: per pair.
        loss = m.sums["loss"] / (max(1.0, m.sums["targets"]) if self.config.method == "supervised" else m.norm)
        accuracy = m.sums["correct"] / max(1.0, m.sums["targets"])
        extra = {}
        if self.config.method == "dpo":
            pairs = max(1.0, m.sums["pairs"])
            extra = {k: m.sums[k] / pairs for k in ("rewards_chosen", "rewards_rejected", "reward_accuracy")}
            extra["reward_margin"] = extra["rewards_chosen"] - extra["rewards_rejected"]
        return loss, accuracy, extra

    def evaluate(self, idxs: list[int] | None = None) -> tuple[float, float]:
        """Loss and token accuracy on validation examples (all of them when idxs is None)."""
        assert self.valid_data is not None
        self.model.eval()
        try:
            idxs = list(range(len(self.valid_data))) if idxs is None else idxs
            measured = self._pass(self.valid_data, idxs, self.ref_cache["valid"], learn=False)
            assert isinstance(measured, _Measured)
            loss, accuracy, _ = self._summary(measured)
            return loss, accuracy
        finally:
            self.model.train()

    def _valid_window(self) -> list[int]:
        assert self.valid_data is not None
        n = len(self.valid_data)
        start = (self.step // self.r.eval_interval) * self.r.batch_size
        return sorted({(start + i) % n for i in range(min(n, self.r.batch_size))})

    def _optimizer_step(self) -> float:
        lr = float(self.scheduler.get_last_lr()[0])
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def _metrics(self, m: _Measured, lr: float) -> StepMetrics:
        loss, accuracy, extra = self._summary(m)
        metrics = StepMetrics(
            step=self.step,
            total_steps=self.r.total_steps,
            epoch=(self.step - 1) // self.r.steps_per_epoch + 1,
            train_loss=loss,
            train_mean_token_accuracy=accuracy,
            trained_tokens=self.tokens,
            learning_rate=lr,
            extra=extra,
        )
        if self.valid_data is not None and self.step % self.r.eval_interval == 0:
            metrics.valid_loss, metrics.valid_mean_token_accuracy = self.evaluate(self._valid_window())
        if self.valid_data is not None and self._epoch_ends():
            metrics.full_valid_loss, metrics.full_valid_mean_token_accuracy = self.evaluate()
            self._track_best(metrics.full_valid_loss)
        return metrics

    def _epoch_ends(self) -> bool:
        return self.step % self.r.steps_per_epoch == 0 or self.step == self.r.total_steps

    def _track_best(self, loss: float) -> None:
        self.best = next_best(self.best, loss, self.step)

    def _should_stop_early(self) -> bool:
        patience = self.r.early_stopping_patience
        return patience > 0 and self.best is not None and self.best.bad_epochs >= patience

    def checkpoint(self) -> Path:
        directory = self.output_dir / "checkpoints" / f"step-{self.step}"
        if self.group.main and (self.saved_step != self.step or not directory.exists()):
            best = dataclasses.asdict(self.best) if self.best else None
            state = ckpt.TrainingState(step=self.step, trained_tokens=self.tokens, fingerprint=self.fingerprint(), best=best)
            ckpt.save_checkpoint(directory, self.model, self.optimizer, self.scheduler, state)
            self.saved_step, self.saved_at = self.step, time.monotonic()
            if self.hooks.on_checkpoint:
                self.hooks.on_checkpoint(self.step, directory)
        return directory

    def _checkpoint_is_due(self) -> bool:
        """A crash never loses more than `checkpoint_interval_seconds` of training (only the
        main process of a data-parallel job saves, so the others' clocks do not matter)."""
        interval = self.config.checkpoint_interval_seconds
        return interval is not None and interval > 0 and time.monotonic() - self.saved_at >= interval

    def _result(
        self,
        status: Literal["succeeded", "paused", "cancelled"],
        adapter: Path | None,
        full_valid: tuple[float | None, float | None] = (None, None),
        **extra: Any,
    ) -> TrainResult:
        return TrainResult(
            status=status,
            step=self.step,
            total_steps=self.r.total_steps,
            trained_tokens=self.tokens,
            adapter_dir=adapter,
            resolved=self.r,
            full_valid_loss=full_valid[0],
            full_valid_mean_token_accuracy=full_valid[1],
            **extra,
        )

    def _stop(self, request: str) -> TrainResult:
        if request == "cancel":
            return self._result("cancelled", None)
        return self._result("paused", self.checkpoint())

    def run(self) -> TrainResult:
        metrics = None
        for step in range(self.step, self.r.total_steps):
            if (stop := self.group.agree(self._poll())) is not None:
                return self._stop(stop)
            rng = torch.get_rng_state()
            measured = self._pass(self.steps_data, self._step_units(step), self.ref_cache["train"], learn=True)
            if isinstance(measured, str):
                torch.set_rng_state(rng)  # the step is redone from its start on resume
                self.optimizer.zero_grad(set_to_none=True)
                return self._stop(measured)
            lr = self._optimizer_step()
            self.step, self.tokens = step + 1, self.tokens + measured.tokens
            metrics = self._metrics(measured, lr)
            if self.hooks.on_step:
                self.hooks.on_step(metrics)
            if self.step % self.r.steps_per_epoch == 0 or self._checkpoint_is_due():
                self.checkpoint()
            if self._should_stop_early():
                self.stopped_early = True
                break
        full: tuple[float | None, float | None] = (None, None)
        if metrics is not None and metrics.full_valid_loss is not None:
            full = (metrics.full_valid_loss, metrics.full_valid_mean_token_accuracy)
        elif self.valid_data is not None:  # resumed from the last step's checkpoint
            full = self.evaluate()
        best_step, best_in_adapter = self._keep_best()
        final_dir = self.output_dir / "adapter"
        if self.group.main:  # every process holds the same weights
            ckpt.save_adapter(self.model, final_dir)
        return self._result(
            "succeeded",
            final_dir,
            full,
            best_step=best_step,
            best_in_adapter=best_in_adapter,
            best_full_valid_loss=self.best.loss if self.best else None,
            stopped_early=self.stopped_early,
            highest_loss_examples=self.highest_loss_examples() if self.group.main else [],
        )

    def _keep_best(self) -> tuple[int | None, bool]:
        """The step whose weights become the fine-tuned model when it is not the last one:
        loaded here when its checkpoint is on this machine; otherwise the worker copies the
        stored checkpoint (a job resumed elsewhere after its best epoch)."""
        if self.best is None or self.best.step == self.step:
            return None, True
        local = self.output_dir / "checkpoints" / f"step-{self.best.step}"
        if not local.exists():
            return self.best.step, False
        ckpt.load_adapter_weights(local, self.model)
        return self.best.step, True

    def highest_loss_examples(self, limit: int = HIGHEST_LOSS_EXAMPLES) -> list[tuple[int, float]]:
        """(line, mean loss per trained token) of the training examples the model fits worst:
        usually mislabelled or contradicting others. Each loss is the one its latest training
        step computed; examples no step of this process saw (a resumed run, another process's
        share) are measured now. Supervised runs only."""
        if self.config.method != "supervised":
            return []
        missing = [i for i in range(self.n_user) if i not in self.example_losses]
        if missing:
            self.model.eval()
            try:
                with torch.no_grad():
                    for batch in self._batches(self.train_data, missing):
                        batch = batch.to(self.device)
                        self._note_example_losses(batch, score_targets(self.model, batch))
            finally:
                self.model.train()
        mean = [(self.train_data.examples[u].line, loss) for u, loss in self.example_losses.items()]
        return sorted(mean, key=lambda item: -item[1])[:limit]

    def tokens_per_second(self) -> float:
        """Measured on the first training step's real data, forward and backward, with the
        gradients dropped and the RNG restored: the basis of the duration estimate. The
        first pass warms up (lazy initialization, allocator) and is not timed."""
        idxs = self._step_units(0)
        rng = torch.get_rng_state()
        self._pass(self.steps_data, idxs[:1], {}, learn=True)
        started = time.perf_counter()
        measured = self._pass(self.steps_data, idxs, {}, learn=True)
        seconds = time.perf_counter() - started
        self.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        tokens = measured.tokens if isinstance(measured, _Measured) else 0
        return tokens / seconds if seconds > 0 else 0.0


def train(
    config: TrainConfig,
    model_path: Path,
    train_data: Dataset,
    output_dir: Path,
    valid_data: Dataset | None = None,
    *,
    on_step: Callable[[StepMetrics], None] | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    should_stop: Callable[[], StopRequest] | None = None,
    resume_from: Path | None = None,
    base_model: Any = None,
    init_adapter: Path | None = None,
    on_ready: Callable[[float, int], None] | None = None,
    replay: Callable[[Any], Dataset] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `model_path` (a materialized HF directory).

    `on_step` gets every step's metrics; `on_checkpoint(step, dir)` each saved checkpoint
    (end of every epoch, on pause, and every `checkpoint_interval_seconds`); `should_stop` is polled before every step and
    between micro-batches: "cancel" returns at once, "pause" saves a checkpoint first.
    `resume_from` is a checkpoint directory of the same run. `base_model`: an already
    loaded model to use instead of loading `model_path` (benchmarks with random weights).
    `init_adapter`: an adapter directory to start from (continued fine-tuning). `on_ready`
    gets the measured training speed in tokens per second and the number of replayed
    examples before the first step of a fresh run (the data report's duration estimate).
    `replay(base_model)` makes the replayed examples (trainer/ml/replay.py) when the config
    asks for replay."""
    if train_data.method != config.method:
        raise ValueError(f"the data was prepared for {train_data.method}, the config says {config.method}")
    hooks = Hooks(on_step=on_step, on_checkpoint=on_checkpoint, should_stop=should_stop)
    run = _Run(config, model_path, train_data, valid_data, output_dir, hooks, base_model, init_adapter, replay)
    if resume_from is not None:
        run.resume(resume_from)
    elif on_ready is not None:
        on_ready(run.tokens_per_second(), run.replay_count)
    return run.run()


def measured_speed(config: TrainConfig, model_path: Path, train_data: Dataset) -> float:
    """Training tokens per second of this machine on this data (one step, thrown away)."""
    with tempfile.TemporaryDirectory() as scratch:
        return _Run(config, model_path, train_data, None, Path(scratch), Hooks()).tokens_per_second()


def context_length(model_path: Path) -> int:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path, local_files_only=True)
    return int(getattr(cfg, "max_position_embeddings", 2048))


def train_files(
    config: TrainConfig,
    model_path: Path,
    training_file: Path,
    output_dir: Path,
    validation_file: Path | None = None,
    **hooks: Any,
) -> TrainResult:
    """Tokenize the user's files with the model's tokenizer and chat template, then train."""
    tokenizer = load_tokenizer(model_path)
    max_len = min(config.max_seq_len or context_length(model_path), context_length(model_path))
    train_data = load_dataset(training_file, tokenizer, config.method, max_len, "training")
    valid_data = load_dataset(validation_file, tokenizer, config.method, max_len, "validation") if validation_file else None
    replay = replay_source(tokenizer, max_len, model_path)
    return train(config, model_path, train_data, output_dir, valid_data, replay=replay, **hooks)


def replay_source(tokenizer: Any, max_len: int, model_path: Path, cache_dir: Path | None = None) -> Callable[[Any], Dataset]:
    """What `train` calls with the loaded base model to make the replayed examples."""
    from trainer.ml.replay import replay_dataset

    return lambda base: replay_dataset(base, tokenizer, max_len, model_path, cache_dir)
