"""What every supervised task shares: optimizer wiring and per-epoch metrics kept as tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from nnlab import compat
from nnlab.logger import TensorBoard
from nnlab.rng import restore_rng_states, save_rng_states
from nnlab.tasks.optim import configure

# Lightning sets its own (named in compat) around every hook call, the task these each epoch;
# nn.Module's __setattr__ (parameter, buffer and submodule bookkeeping) costs more than the hook
# itself on small data.
_PLAIN_ATTRS = compat.LIGHTNING_PER_HOOK_ATTRS | {
    "_epoch_lr",
    "diverged_at",
    "config_stamp",
    "_step_every",
    "_step_losses",
}
STEP_LOSS = "train/loss_step"  # the training loss of single optimizer steps, every N of them


# One Lightning step's data: TensorBatches yields a list of batches when asked to group them
# (trainer.steps_per_execution), else one batch, a tuple.
Batches = list[tuple[Tensor, ...]] | tuple[Tensor, ...]


def each_batch(batches: Batches) -> list[tuple[Tensor, ...]]:
    """The batches of one Lightning step, as a list."""
    return batches if isinstance(batches, list) else [batches]


class LeanModule(pl.LightningModule):
    """A LightningModule whose per-hook bookkeeping skips nn.Module's attribute machinery, with
    the epoch bookkeeping every task that keeps per-epoch tensor sums shares."""

    diverged_at: int | None = None  # the epoch whose training loss was NaN/inf
    CONFIG_KEY = "nnlab"  # where checkpoints hold the stamp: config, version, preprocessing
    # Set by train(): every checkpoint, weights-only best.ckpt included, carries the resolved
    # config, so a .ckpt copied out of its run still rebuilds its model.
    config_stamp: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.config_stamp is not None:
            checkpoint[self.CONFIG_KEY] = self.config_stamp
        # Full checkpoints (last.ckpt) resume; weights-only ones (best.ckpt) never do. Kept in
        # the module's hooks rather than a callback's: Lightning dispatches every per-step hook
        # to every callback, 1% of a small model's epoch for one that only acts at checkpoints.
        if "optimizer_states" in checkpoint:
            save_rng_states(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_rng_states(checkpoint)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PLAIN_ATTRS:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    _step_every = 0  # trainer.log_every_n_steps, or 0: no TensorBoard, no step losses kept
    _step_losses: list[tuple[int, Tensor]]  # (optimizer step, its loss), set each epoch

    def _start_step_losses(self) -> None:
        self._step_losses = []
        logged = isinstance(self.logger, TensorBoard)
        self._step_every = self.trainer.log_every_n_steps if logged else 0

    def _keep_step_losses(self, losses: list[Tensor], last: int) -> None:
        """Keeps, on the device, the losses of the optimizer steps that end at `last` and fall
        on a multiple of log_every_n_steps: nothing per batch but this, once per Lightning step."""
        every, first = self._step_every, last - len(losses) + 1
        for step in range(-(-first // every) * every, last + 1, every):
            self._step_losses.append((step, losses[step - first]))

    def _write_step_losses(self) -> None:
        """The epoch's sampled step losses to TensorBoard, in one host transfer."""
        if self._step_every and self._step_losses:
            steps = [step for step, _ in self._step_losses]
            values = torch.stack([loss for _, loss in self._step_losses]).float().tolist()
            self.logger.log_points(STEP_LOSS, zip(steps, values, strict=True))
            self._step_losses = []

    def _note_epoch_lr(self) -> None:
        # Epoch-interval schedules step before on_train_epoch_end: note the lr this epoch used.
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def _over_all_processes(self, sums: Tensor) -> Tensor:
        """Every process's sums added up, so epoch means are exact over all samples."""
        if self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(sums.clone(), reduce_op="sum")
        return sums

    def _stop_if_diverged(self, loss: Tensor) -> None:
        # One host sync per epoch: a NaN/inf loss ends the run (last.ckpt keeps the state).
        if not torch.isfinite(loss):
            self.diverged_at = self.current_epoch + 1
            self.trainer.should_stop = True


class SupervisedTask(LeanModule):
    """Wraps any nn.Module mapping a batch's inputs to outputs scored against its targets.

    A batch is (x, y) or (x, y, lengths) for padded variable-length sequences. Each epoch
    accumulates loss·n, the score's sum and n as tensors and logs them once: per-step `self.log`
    and `.item()` host syncs cost more than the model itself on small data. The score is taken
    once per step, over all its batches' outputs. Subclasses give `_loss` and `_score` and name
    the score (`acc`, `mae`).

    Every step takes a list of batches (trainer.steps_per_execution of them), and training steps
    the optimizer once per batch itself: Lightning's own loop costs about as much per step as a
    small model's arithmetic. Clipping and the learning-rate schedule are applied here as
    Lightning would apply them.
    """

    score_name = "score"
    monitor: tuple[str, str] = ("val/loss", "min")  # the metric that picks best.ckpt, and mode
    test_samples: int | None = None  # how many samples the last test scored

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: dict[str, Any],
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_config = scheduler
        self.gradient_clip: tuple[float | None, str] = (None, "norm")  # value, algorithm
        # Lightning validates before on_train_epoch_end, so training and evaluation each keep
        # their own sums.
        self._sums = {"train": torch.zeros(3), "eval": torch.zeros(3)}

    def _loss(self, outputs: Tensor, y: Tensor) -> Tensor:
        """The mean loss over a batch."""
        raise NotImplementedError

    def _score(self, outputs: Tensor, y: Tensor) -> Tensor:
        """The score summed over the samples of one or more batches."""
        raise NotImplementedError

    def forward(self, x: Tensor, *extra: Tensor) -> Tensor:
        return self.model(x, *extra)

    def _step(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """The batch's mean loss and the model's outputs."""
        x, y, *extra = batch
        outputs = self.model(x, *extra)
        return self._loss(outputs, y), outputs

    def _tally(
        self,
        kind: str,
        batches: list[tuple[Tensor, ...]],
        losses: list[Tensor],
        outputs: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Adds one Lightning step's batches to the epoch's sums; returns their outputs and
        targets. Scoring the step's batches at once takes a handful of tensor operations
        instead of a handful per batch, each of which costs as much as a small layer."""
        targets = [batch[1] for batch in batches]
        output, target = (torch.cat(t) if len(t) > 1 else t[0] for t in (outputs, targets))
        with torch.no_grad():
            sums = self._sums[kind]  # float32, whatever the training precision
            sizes = sums.new_tensor([len(y) for y in targets])
            loss_sum = torch.stack(losses).to(sums.dtype) @ sizes
            score = self._score(output, target).to(sums.dtype)
            sums += torch.stack([loss_sum, score, sizes.sum()])
        return output, target

    def _evaluate(self, batches: Batches) -> tuple[Tensor, Tensor]:
        group = each_batch(batches)
        losses, outputs = zip(*(self._step(batch) for batch in group), strict=True)
        return self._tally("eval", group, list(losses), list(outputs))

    def _reset(self, kind: str) -> None:
        self._sums[kind] = torch.zeros(3, device=self.device)

    def _epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        loss_sum, score_sum, n = self._over_all_processes(
            self._sums["train" if stage == "train" else "eval"]
        )
        return {f"{stage}/loss": loss_sum / n, f"{stage}/{self.score_name}": score_sum / n}

    def metric_names(self) -> list[str]:
        """The metrics a run of this task records (metrics.json): what sweep.metric may name."""
        names = ("loss", self.score_name)
        return [*(f"{s}/{n}" for s in ("train", "val", "test") for n in names), "train/lr"]

    def _schedules(self, interval: str) -> list[Any]:
        return [c.scheduler for c in self.trainer.lr_scheduler_configs if c.interval == interval]

    def on_train_epoch_start(self) -> None:
        self._reset("train")
        # Epoch schedules step as each later epoch starts, which Lightning does as the previous
        # one ends: the same rates, and a checkpoint from any point of an epoch's end resumes
        # with the right count.
        if self.current_epoch > 0:
            for schedule in self._schedules("epoch"):
                schedule.step()
        self._note_epoch_lr()
        self._start_step_losses()

    def training_step(self, batches: Batches, batch_idx: int) -> None:
        optimizer = self.optimizers()
        per_step = self._schedules("step")
        group = each_batch(batches)
        losses, outputs = [], []
        for batch in group:
            loss, output = self._step(batch)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()  # calls on_before_optimizer_step, which clips
            for schedule in per_step:
                schedule.step()
            losses.append(loss.detach())
            outputs.append(output.detach())
        self._tally("train", group, losses, outputs)
        if self._step_every:
            self._keep_step_losses(losses, self.trainer.global_step)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After the callbacks' hook, as in Lightning's automatic loop: gradient-flow records
        # see the gradients before clipping.
        value, algorithm = self.gradient_clip
        if value:
            self.clip_gradients(
                optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm
            )

    def on_train_epoch_end(self) -> None:
        metrics = self._epoch_metrics("train")
        self.log_dict({**metrics, "train/lr": self._epoch_lr})
        self._write_step_losses()
        self._stop_if_diverged(metrics["train/loss"])

    def on_validation_epoch_start(self) -> None:
        self._reset("eval")

    def validation_step(self, batches: Batches, batch_idx: int) -> None:
        self._evaluate(batches)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self._epoch_metrics("val"))

    def on_test_epoch_start(self) -> None:
        self._reset("eval")

    def test_step(self, batches: Batches, batch_idx: int) -> None:
        self._tested(*self._evaluate(batches))

    def _tested(self, outputs: Tensor, targets: Tensor) -> None:
        """One test step's outputs and targets, for tasks that score more than loss and score."""

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._epoch_metrics("test"))
        # an accuracy's 95% interval depends on how many samples it was measured on (noise.py)
        self.test_samples = int(self._over_all_processes(self._sums["eval"])[2])

    def configure_optimizers(self) -> Any:
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018 (loads the training data)
        steps = getattr(trainer.train_dataloader, "steps", None) or len(trainer.train_dataloader)
        return configure(
            self,
            self.model.parameters(),
            self.optimizer_factory,
            self.scheduler_config,
            total_steps=steps * trainer.max_epochs,
        )
