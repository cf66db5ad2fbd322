"""Classification task: cross-entropy or quadratic cost, accuracy, confusion matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from nnlab.errors import choice_error
from nnlab.tasks.optim import configure

LOSSES = ("cross_entropy", "mse")


def classification_loss(kind: str, logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """cross_entropy on logits, or mse: the quadratic cost C = 1/2n·Σ||y − a||² between the
    one-hot target y and the softmax output a (the cost of classic backprop)."""
    if kind == "cross_entropy":
        return F.cross_entropy(logits, target)
    if kind == "mse":
        onehot = F.one_hot(target, num_classes).to(logits.dtype)
        return 0.5 * (logits.softmax(dim=1) - onehot).pow(2).sum(dim=1).mean()
    raise choice_error("loss", kind, LOSSES)


class ClassificationTask(pl.LightningModule):
    """Wraps any nn.Module mapping inputs to class logits.

    Metrics are accumulated as tensors and logged once per epoch: per-step `self.log` and
    `.item()` host syncs cost more than the model itself on small data.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: dict[str, Any],
        num_classes: int,
        loss: str = "cross_entropy",
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise choice_error("loss", loss, LOSSES)
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_config = scheduler
        self.num_classes = num_classes
        self.loss_kind = loss
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        # Inputs come from our own model and datamodule: skip torchmetrics' per-batch checks.
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self._train_sums = torch.zeros(3)  # loss·n, correct, n
        self._eval_sums = torch.zeros(2)  # loss·n, n

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return classification_loss(self.loss_kind, logits, y, self.num_classes)

    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(3, device=self.device)
        # Epoch-interval schedules step before on_train_epoch_end: note the lr this epoch used.
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.model(x)
        loss = self._loss(logits, y)
        with torch.no_grad():
            n = y.new_tensor(len(y), dtype=torch.float32)
            correct = (logits.argmax(dim=1) == y).sum()
            self._train_sums += torch.stack([loss.detach() * n, correct.float(), n])
        return loss

    def on_train_epoch_end(self) -> None:
        loss_sum, correct, n = self._train_sums
        self.log_dict(
            {"train/loss": loss_sum / n, "train/acc": correct / n, "train/lr": self._epoch_lr},
            sync_dist=True,
        )

    def _eval_step(self, batch: tuple[Tensor, Tensor], accuracy: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self.model(x)
        loss = self._loss(logits, y)
        accuracy.update(logits, y)
        n = y.new_tensor(len(y), dtype=torch.float32)
        self._eval_sums += torch.stack([loss * n, n])
        return logits

    def _log_eval(self, stage: str, accuracy: MulticlassAccuracy) -> None:
        loss_sum, n = self._eval_sums
        self.log_dict(
            {f"{stage}/loss": loss_sum / n, f"{stage}/acc": accuracy.compute()},
            sync_dist=True,
        )
        accuracy.reset()

    def on_validation_epoch_start(self) -> None:
        self._eval_sums = torch.zeros(2, device=self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val", self.val_acc)

    def on_test_epoch_start(self) -> None:
        self._eval_sums = torch.zeros(2, device=self.device)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        logits = self._eval_step(batch, self.test_acc)
        self.test_confusion.update(logits, batch[1])

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_acc)
        self._log_confusion_figure()
        self.test_confusion.reset()

    def _log_confusion_figure(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_figure"):
            return
        import matplotlib

        matplotlib.use("Agg")
        fig, _ = self.test_confusion.plot(labels=self.class_names)
        experiment.add_figure("test/confusion_matrix", fig, global_step=self.global_step)

    def configure_optimizers(self) -> Any:
        return configure(
            self, self.model.parameters(), self.optimizer_factory, self.scheduler_config
        )
