"""Classification task: cross-entropy or quadratic cost, accuracy, confusion matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from nnlab.choices import LOSSES
from nnlab.errors import choice_error
from nnlab.tasks.optim import Schedule
from nnlab.tasks.supervised import SupervisedTask

# (loss= name, logits, class targets, number of classes) → the batch's mean loss
Cost = Callable[[str, Tensor, Tensor, int], Tensor]


def classification_loss(kind: str, logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """cross_entropy on logits, or mse: the quadratic cost C = 1/2n·Σ||y − a||² between the
    one-hot target y and the softmax output a (the cost of classic backprop)."""
    if kind == "cross_entropy":
        return F.cross_entropy(logits, target)
    if kind == "mse":
        onehot = F.one_hot(target, num_classes).to(logits.dtype)
        return 0.5 * (logits.softmax(dim=1) - onehot).pow(2).sum(dim=1).mean()
    raise choice_error("loss", kind, LOSSES)


class ClassificationTask(SupervisedTask):
    """Any nn.Module mapping inputs to class logits; logs loss and accuracy, and a test
    confusion-matrix figure. `cost` computes the loss; a model that brings its own derivative
    (model.engine=scratch) has build.py pass the model's cost instead of autograd's."""

    score_name = "acc"
    monitor = ("val/acc", "max")

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: Schedule,
        num_classes: int,
        loss: str = "cross_entropy",
        class_names: list[str] | None = None,
        cost: Cost = classification_loss,
    ) -> None:
        super().__init__(model, optimizer, schedule)
        if loss not in LOSSES:
            raise choice_error("loss", loss, LOSSES)
        self.num_classes = num_classes
        self.loss_kind = loss
        self.cost = cost
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.confusion: list[list[int]] | None = None  # the last test's counts, for plots/

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return self.cost(self.loss_kind, logits, y, self.num_classes)

    def _score(self, logits: Tensor, y: Tensor) -> Tensor:
        return (logits.argmax(dim=1) == y).sum()

    def _tested(self, logits: Tensor, targets: Tensor) -> None:
        self.test_confusion.update(logits, targets)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.confusion = self.test_confusion.compute().tolist()
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
