"""Gradient flow: per-layer gradient norms and update ratios, and a warning when they vanish or
explode."""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from nnlab.errors import Notice
from nnlab.logger import write_scalars


class GradientFlowWarning(Notice):
    """Gradients vanish or explode: training will stall or diverge."""


VANISHING_ADVICE = (
    "use activation=relu instead of sigmoid/tanh, add norm=batch, add residual connections "
    "(model.residual=true), or make the network shallower"
)
EXPLODING_ADVICE = (
    "clip gradients (trainer.gradient_clip_val=1.0), lower optimizer.lr, or add norm=batch"
)


# Layer kinds named as papers and torchvision's models name them: conv1, fc2, lstm1.
KINDS = {"Conv": "conv", "ConvTranspose": "deconv", "Linear": "fc", "Embedding": "embed"}


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The model's weight matrices and kernels, input to output, named for their layer's kind
    and place among layers of that kind (`conv1.weight`, `fc2.weight`, `lstm1.weight_hh_l0`):
    Sequential models' own names are positions (`0.0.weight`, `10.weight`)."""
    counts: dict[str, int] = {}
    layers, seen = [], set()
    for module in model.modules():
        weights = [(n, p) for n, p in module.named_parameters(recurse=False) if p.dim() > 1]
        weights = [(n, p) for n, p in weights if id(p) not in seen]  # a layer used twice
        if not weights:
            continue
        kind = re.sub(r"\dd$", "", type(module).__name__)  # Conv2d, ConvTranspose1d
        kind = KINDS.get(kind, kind.lower())
        counts[kind] = counts.get(kind, 0) + 1
        for name, param in weights:
            seen.add(id(param))
            layers.append((f"{kind}{counts[kind]}.{name}", param))
    return layers


class GradientFlow(pl.Callback):
    """Every `every` optimizer steps, records ‖∂C/∂w‖ of each weight matrix or kernel and its
    update ratio η·‖∂C/∂w‖/‖w‖ (the step plain SGD would take, relative to the weights).

    The norms stay on the device until the epoch ends: one host transfer per epoch, then
    `grad_norm/<layer>` and `update_ratio/<layer>` go to TensorBoard. Warns once when the first
    layer's gradient is below `vanishing` × the last layer's for `patience` epochs in a row, and
    once when any norm exceeds `exploding` or is not finite.
    """

    def __init__(
        self, every: int = 10, vanishing: float = 1e-3, exploding: float = 1e3, patience: int = 3
    ) -> None:
        self.every, self.vanishing, self.exploding, self.patience = (
            every,
            vanishing,
            exploding,
            patience,
        )
        self.layers: list[tuple[str, Tensor]] = []
        self._pending: list[tuple[int, Tensor, Tensor]] = []
        self.ratios: list[float] = []  # first/last layer gradient norm, per epoch
        self.summary: dict[str, float] = {}  # last epoch's mean gradient norm per layer
        self.history: list[tuple[int, dict[str, float]]] = []  # (epoch, summary), for plots/
        self.warned: set[str] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.layers = weight_layers(getattr(pl_module, "model", pl_module))

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if trainer.global_step % self.every or not self.layers:
            return
        with torch.no_grad():
            grads = torch.stack(
                [p.grad.norm() if p.grad is not None else p.new_zeros(()) for _, p in self.layers]
            )
            weights = torch.stack([p.norm() for _, p in self.layers]).clamp_min(1e-12)
        lr = float(optimizer.param_groups[0]["lr"])
        self._pending.append((trainer.global_step, grads, lr * grads / weights))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._pending:
            return
        steps = [step for step, _, _ in self._pending]
        grads = torch.stack([g for _, g, _ in self._pending]).cpu()
        ratios = torch.stack([r for _, _, r in self._pending]).cpu()
        self._pending = []
        self._write(pl_module, steps, grads, ratios)
        mean = grads.mean(dim=0)
        self.summary = {name: float(mean[i]) for i, (name, _) in enumerate(self.layers)}
        self.history.append((trainer.current_epoch + 1, self.summary))
        self.ratios.append(float(mean[0] / mean[-1].clamp_min(1e-30)))
        self._check(grads)

    def _write(
        self, pl_module: pl.LightningModule, steps: list[int], grads: Tensor, ratios: Tensor
    ) -> None:
        """One TensorBoard event per sampled step, holding every layer's two values."""
        experiment = getattr(pl_module.logger, "experiment", None)
        if experiment is None:
            return
        # Loaded with the logger. Ranks other than 0 hold Lightning's stand-in experiment.
        from torch.utils.tensorboard import SummaryWriter

        if not isinstance(experiment, SummaryWriter):
            return
        names = [name for name, _ in self.layers]
        for step, g, r in zip(steps, grads.tolist(), ratios.tolist(), strict=True):
            values = {
                f"{kind}/{name}": value
                for kind, row in (("grad_norm", g), ("update_ratio", r))
                for name, value in zip(names, row, strict=True)
            }
            write_scalars(experiment, values, step)

    def _check(self, grads: Tensor) -> None:
        first, last = self.layers[0][0], self.layers[-1][0]
        recent = self.ratios[-self.patience :]
        if len(recent) == self.patience and all(r < self.vanishing for r in recent):
            self._warn_once(
                "vanishing",
                f"Vanishing gradients: the first layer ({first}) gets {recent[-1]:.1e}× the "
                f"gradient of the last ({last}) for {self.patience} epochs, so the early layers "
                f"barely learn. Try: {VANISHING_ADVICE}.",
            )
        largest = float(grads.max()) if torch.isfinite(grads).all() else math.inf
        if largest > self.exploding:
            self._warn_once(
                "exploding",
                f"Exploding gradients: a gradient norm reached {largest:.3g} (above "
                f"{self.exploding:g}). Try: {EXPLODING_ADVICE}.",
            )

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            warnings.warn(message, GradientFlowWarning, stacklevel=2)
