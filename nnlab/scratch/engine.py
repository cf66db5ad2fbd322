"""model.engine=scratch: the MLP trained by BP1–BP4 and the hand-written update rules.

The network (models/mlp.py's BackpropMLP) keeps nn.Parameters, so checkpoints, schedulers,
gradient clipping and the gradient-flow callback see an ordinary module; only the arithmetic,
here, is hand-written. Autograd does nothing but call two hand-written backward functions in
turn: the cost's (BP1) and the network's (BP2–BP4). No derivative is taken by torch.

This file knows tensors, not modules: models/ builds on it, never the other way round.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nnlab.errors import UserError
from nnlab.scratch.backprop import ScratchMLP

# nnlab's loss= names → the hand-written costs (mse is the quadratic cost on softmax outputs)
COST_OF_LOSS = {"cross_entropy": "cross_entropy", "mse": "softmax_quadratic"}


class _Network(torch.autograd.Function):
    """Forward pass → zᴸ; backward: BP2–BP4 from δᴸ = ∂C/∂zᴸ."""

    @staticmethod
    def forward(ctx: Any, activation: str, x: Tensor, *params: Tensor) -> Tensor:
        depth = len(params) // 2
        net = ScratchMLP(list(params[:depth]), list(params[depth:]), activation, "cross_entropy")
        zs, activations = net.forward(x)
        ctx.net = net
        ctx.save_for_backward(*zs, *activations)
        return zs[-1]

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        depth = len(ctx.net.weights)
        saved = ctx.saved_tensors
        grad_w, grad_b, first = ctx.net.backward_from(delta, list(saved[:depth]), saved[depth:])
        # ∂C/∂x only when something upstream asks for it (never for data)
        grad_x = first @ ctx.net.weights[0] if ctx.needs_input_grad[1] else None
        return None, grad_x, *grad_w, *grad_b


class _Cost(torch.autograd.Function):
    """C of a batch from zᴸ; backward: BP1."""

    @staticmethod
    def forward(ctx: Any, net: ScratchMLP, z: Tensor, y: Tensor) -> Tensor:
        ctx.net = net
        ctx.save_for_backward(z, y)
        return net.cost_of(z, y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, y = ctx.saved_tensors
        return None, grad * ctx.net.output_error(z, y), None


def network_output(
    activation: str, x: Tensor, weights: list[Tensor], biases: list[Tensor]
) -> Tensor:
    """zᴸ of the plain MLP with these parameters (x flattened); its gradients are BP2–BP4."""
    return _Network.apply(activation, x, *weights, *biases)


def cost(loss: str, activation: str, logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """nnlab's loss= on class targets, with BP1 for its gradient."""
    net = ScratchMLP([], [], activation, COST_OF_LOSS[loss])
    return _Cost.apply(net, logits, F.one_hot(target, num_classes).to(logits.dtype))


def check_supported(norm: str, dropout: float, residual: bool) -> None:
    """The hand-written engine covers plain layers (linear → activation) only."""
    refuse(
        [
            (norm != "none", f"norm={norm}", "norm=none"),
            (dropout > 0, f"model.dropout={dropout}", "model.dropout=0"),
            (residual, "model.residual=true", "model.residual=false"),
        ],
        "model.engine=scratch implements the four backprop equations for plain layers "
        "(linear → activation)",
        "nnlab train model.engine=scratch norm=none model.dropout=0",
    )


def refuse(unsupported: list[tuple[bool, str, str]], covers: str, example: str) -> None:
    """UserError, before anything is built, naming every setting a scratch engine cannot train
    with: `unsupported` holds (is it set?, the setting as given, the setting to use instead);
    `covers` says what the engine does, `example` a command that trains with it."""
    bad = [(given, fix) for wrong, given, fix in unsupported if wrong]
    if bad:
        raise UserError(
            f"{covers}, so it cannot train with {', '.join(g for g, _ in bad)}. Add "
            f"{' '.join(f for _, f in bad)} (for example `{example}`), or use "
            f"model.engine=autograd."
        )
