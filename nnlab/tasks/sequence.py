"""Sequence regression and forecasting: mean squared error on real-valued targets."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from nnlab.tasks.supervised import SupervisedTask


class RegressionTask(SupervisedTask):
    """Any nn.Module mapping a (padded) sequence to real-valued outputs, e.g. the sum the adding
    problem asks for or the next steps of a series. `loss` is the MSE; `mae` the mean absolute
    error per output value."""

    score_name = "mae"
    monitor = ("val/loss", "min")

    def _loss(self, outputs: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(outputs.reshape(y.shape), y)

    def _score(self, outputs: Tensor, y: Tensor) -> Tensor:
        return (outputs.reshape(y.shape) - y).abs().flatten(1).mean(dim=1).sum()
