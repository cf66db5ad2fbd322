"""Batch and layer normalization, forward and backward by hand, no autograd.

Both normalize x over a set of m entries, then scale and shift:

    μ = 1/m Σ x        σ² = 1/m Σ (x − μ)²        x̂ = (x − μ)/√(σ² + ε)        y = γ x̂ + β

Batch norm takes the m entries of one channel across the batch (and the positions H×W of an
image); layer norm takes those of one sample across its last dims. With δ = ∂C/∂y and
ĝ = ∂C/∂x̂ = γ δ, the chain rule through μ and σ² (both depend on every x) gives

    ∂C/∂x = 1/(m √(σ² + ε)) (m ĝ − Σ ĝ − x̂ Σ(ĝ x̂))       the sums over the same m entries
    ∂C/∂γ = Σ δ x̂          ∂C/∂β = Σ δ                    summed where γ and β are shared

For batch norm γ is one number per channel, so ĝ = γδ and ∂C/∂x is the course's
(γ / (m √(σ² + ε))) (m δ − Σ δ − x̂ Σ(δ x̂)).

Training mode keeps running averages for evaluation, as torch does:
    running_mean ← (1 − momentum) running_mean + momentum μ
    running_var  ← (1 − momentum) running_var  + momentum σ² m/(m − 1)   (unbiased variance)
Evaluation mode normalizes with them instead: y = γ (x − running_mean)/√(running_var + ε) + β,
a fixed affine map, so ∂C/∂x = γ δ / √(running_var + ε).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nnlab.scratch.checking import DTYPE, Row, generator, randn, relative_error

EPS = 1e-5  # torch's default ε for both norms
MOMENTUM = 0.1  # torch's default for the running averages


def _batch_dims(x: Tensor) -> tuple[int, ...]:
    """Batch norm's m entries per channel: every dim but the channels (dim 1)."""
    return (0, *range(2, x.dim()))


def _per_channel(t: Tensor, x: Tensor) -> Tensor:
    """γ, β or a running statistic (C,) shaped to broadcast over x (N, C, ...)."""
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


def normalize(x: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor]:
    """x̂ and 1/√(σ² + ε) over `dims`."""
    mu = x.mean(dim=dims, keepdim=True)  # μ = 1/m Σ x
    var = ((x - mu) ** 2).mean(dim=dims, keepdim=True)  # σ² = 1/m Σ (x − μ)², biased
    inv_std = 1 / torch.sqrt(var + eps)
    return (x - mu) * inv_std, inv_std  # x̂ = (x − μ)/√(σ² + ε)


def normalize_backward(
    g_hat: Tensor, x_hat: Tensor, inv_std: Tensor, dims: tuple[int, ...]
) -> Tensor:
    """∂C/∂x from ĝ = ∂C/∂x̂: 1/(m √(σ² + ε)) (m ĝ − Σ ĝ − x̂ Σ(ĝ x̂))."""
    m = x_hat.numel() // inv_std.numel()
    sum_g = g_hat.sum(dim=dims, keepdim=True)  # Σ ĝ: through μ
    sum_gx = (g_hat * x_hat).sum(dim=dims, keepdim=True)  # Σ(ĝ x̂): through σ²
    return inv_std / m * (m * g_hat - sum_g - x_hat * sum_gx)


def batchnorm_forward(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float = EPS
) -> tuple[Tensor, Tensor, Tensor]:
    """Training mode: y = γ x̂ + β with the batch's own μ and σ²; returns y, x̂, 1/√(σ² + ε)."""
    x_hat, inv_std = normalize(x, _batch_dims(x), eps)
    return _per_channel(gamma, x) * x_hat + _per_channel(beta, x), x_hat, inv_std


def batchnorm_backward(
    delta: Tensor, x_hat: Tensor, inv_std: Tensor, gamma: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """∂C/∂x, ∂C/∂γ = Σ δ x̂, ∂C/∂β = Σ δ (sums over the batch and positions)."""
    dims = _batch_dims(delta)
    grad_x = normalize_backward(_per_channel(gamma, delta) * delta, x_hat, inv_std, dims)
    return grad_x, (delta * x_hat).sum(dim=dims), delta.sum(dim=dims)


def unbiased_variance(x: Tensor) -> Tensor:
    """Per channel, Σ (x − μ)² / (m − 1): torch keeps this one in running_var."""
    dims = _batch_dims(x)
    m = x.numel() // x.shape[1]
    return ((x - x.mean(dim=dims, keepdim=True)) ** 2).sum(dim=dims) / (m - 1)


def update_running(
    running_mean: Tensor, running_var: Tensor, x: Tensor, momentum: float = MOMENTUM
) -> None:
    """The running averages, in place, from one training batch x (torch's rule)."""
    mu, var = x.mean(dim=_batch_dims(x)), unbiased_variance(x)
    running_mean.mul_(1 - momentum).add_(momentum * mu)
    running_var.mul_(1 - momentum).add_(momentum * var)


def batchnorm_eval(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float = EPS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Evaluation mode: y = γ (x − running_mean)/√(running_var + ε) + β; returns y, x̂, 1/√."""
    inv_std = _per_channel(1 / torch.sqrt(running_var + eps), x)
    x_hat = (x - _per_channel(running_mean, x)) * inv_std
    return _per_channel(gamma, x) * x_hat + _per_channel(beta, x), x_hat, inv_std


def batchnorm_eval_backward(
    delta: Tensor, x_hat: Tensor, inv_std: Tensor, gamma: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The statistics are constants now: ∂C/∂x = γ δ / √(running_var + ε)."""
    dims = _batch_dims(delta)
    grad_x = _per_channel(gamma, delta) * delta * inv_std
    return grad_x, (delta * x_hat).sum(dim=dims), delta.sum(dim=dims)


def layernorm_forward(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float = EPS
) -> tuple[Tensor, Tensor, Tensor]:
    """y = γ ⊙ x̂ + β, x̂ per sample over the last γ.dim() dims (γ, β elementwise); y, x̂, 1/√."""
    dims = tuple(range(x.dim() - gamma.dim(), x.dim()))
    x_hat, inv_std = normalize(x, dims, eps)
    return gamma * x_hat + beta, x_hat, inv_std


def layernorm_backward(
    delta: Tensor, x_hat: Tensor, inv_std: Tensor, gamma: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """∂C/∂x with ĝ = γ ⊙ δ; ∂C/∂γ = Σ δ x̂, ∂C/∂β = Σ δ summed over the samples (lead dims)."""
    dims = tuple(range(delta.dim() - gamma.dim(), delta.dim()))
    lead = tuple(range(delta.dim() - gamma.dim()))
    grad_x = normalize_backward(gamma * delta, x_hat, inv_std, dims)
    return grad_x, (delta * x_hat).sum(dim=lead), delta.sum(dim=lead)


# ---- nnlab check batchnorm / layernorm: each pass against autograd through torch's own norm


def _compare(case: str, mine: list[Tensor], leaves: list[Tensor], names: list[str]) -> list[Row]:
    return [
        Row(case, name, relative_error(m, leaf.grad))
        for m, leaf, name in zip(mine, leaves, names, strict=True)
    ]


def _batchnorm_rows(case: str, x: Tensor, gamma: Tensor, beta: Tensor, delta: Tensor) -> list[Row]:
    """Training mode, C = Σ δ ⊙ y so that ∂C/∂y = δ."""
    y, x_hat, inv_std = batchnorm_forward(x, gamma, beta)
    mine = list(batchnorm_backward(delta, x_hat, inv_std, gamma))
    leaves = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
    reference = torch.nn.functional.batch_norm(
        leaves[0], None, None, leaves[1], leaves[2], training=True, eps=EPS
    )
    (reference * delta).sum().backward()
    rows = [Row(case, "y", relative_error(y, reference.detach()))]
    return rows + _compare(case, mine, leaves, ["∂C/∂x", "∂C/∂γ", "∂C/∂β"])


def _running_rows(case: str, gen: torch.Generator, shape: tuple[int, ...]) -> list[Row]:
    """Three training steps against nn.BatchNorm1d/2d's running averages, then eval mode."""
    channels = shape[1]
    torch_bn = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(channels, dtype=DTYPE)
    mean, var = torch.zeros(channels, dtype=DTYPE), torch.ones(channels, dtype=DTYPE)
    for _ in range(3):
        x = randn(gen, *shape) * 2 + 1
        torch_bn(x)
        update_running(mean, var, x, torch_bn.momentum)
    rows = [
        Row(case, "running_mean (3 steps)", relative_error(mean, torch_bn.running_mean)),
        Row(case, "running_var (3 steps)", relative_error(var, torch_bn.running_var)),
    ]
    x, delta = randn(gen, *shape), randn(gen, *shape)
    gamma, beta = randn(gen, channels), randn(gen, channels)
    y, x_hat, inv_std = batchnorm_eval(x, gamma, beta, mean, var)
    mine = batchnorm_eval_backward(delta, x_hat, inv_std, gamma)
    leaf = x.clone().requires_grad_(True)
    with torch.no_grad():
        torch_bn.weight.copy_(gamma)
        torch_bn.bias.copy_(beta)
    reference = torch_bn.eval()(leaf)
    (reference * delta).sum().backward()
    leaves = [leaf, torch_bn.weight, torch_bn.bias]
    rows.append(Row(case, "y (eval)", relative_error(y, reference.detach())))
    return rows + _compare(
        case, list(mine), leaves, ["∂C/∂x (eval)", "∂C/∂γ (eval)", "∂C/∂β (eval)"]
    )


def check_batchnorm(seed: int = 0) -> list[Row]:
    """Batch norm on (N, C) and (N, C, H, W) inputs, several N: y, ∂C/∂x, ∂C/∂γ, ∂C/∂β against
    autograd, and the running averages and eval mode against nn.BatchNorm1d/2d."""
    gen = generator(seed)
    rows: list[Row] = []
    for shape in [(4, 3), (16, 5), (2, 3, 4, 4), (5, 2, 3, 6)]:
        case = " ".join(f"{k}={v}" for k, v in zip("NCHW", shape, strict=False))
        x = randn(gen, *shape) * 2 + 1  # off-centre, so μ and σ² matter
        gamma, beta = randn(gen, shape[1]), randn(gen, shape[1])
        rows += _batchnorm_rows(case, x, gamma, beta, randn(gen, *shape))
        rows += _running_rows(case, gen, shape)
    return rows


def check_layernorm(seed: int = 0) -> list[Row]:
    """Layer norm over the last dim and over the last 3 dims: y, ∂C/∂x, ∂C/∂γ, ∂C/∂β."""
    gen = generator(seed)
    rows: list[Row] = []
    for shape, normalized in [((4, 6), 1), ((2, 3, 5), 1), ((2, 3, 4, 5), 3), ((3, 2, 2, 7), 3)]:
        case = f"x={tuple(shape)} over last {normalized}"
        x = randn(gen, *shape) * 2 + 1
        gamma, beta = randn(gen, *shape[-normalized:]), randn(gen, *shape[-normalized:])
        delta = randn(gen, *shape)
        y, x_hat, inv_std = layernorm_forward(x, gamma, beta)
        mine = list(layernorm_backward(delta, x_hat, inv_std, gamma))
        leaves = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
        reference = torch.nn.functional.layer_norm(leaves[0], gamma.shape, *leaves[1:], eps=EPS)
        (reference * delta).sum().backward()
        rows.append(Row(case, "y", relative_error(y, reference.detach())))
        rows += _compare(case, mine, leaves, ["∂C/∂x", "∂C/∂γ", "∂C/∂β"])
    return rows


# ---- the engine's layers: autograd only calls the hand-written backward above


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm; backward: the hand-written ∂C/∂x, ∂C/∂γ, ∂C/∂β."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gamma: Tensor, beta: Tensor, eps: float = EPS) -> Tensor:
        y, x_hat, inv_std = batchnorm_forward(x, gamma, beta, eps)
        ctx.save_for_backward(x_hat, inv_std, gamma)
        return y

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        return *batchnorm_backward(delta, *ctx.saved_tensors), None


class BatchNormEvalFunction(torch.autograd.Function):
    """Eval-mode batch norm with the running averages (constants: no gradient for them)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gamma: Tensor, beta: Tensor, *stats_and_eps: Any) -> Tensor:
        y, x_hat, inv_std = batchnorm_eval(x, gamma, beta, *stats_and_eps)
        ctx.save_for_backward(x_hat, inv_std, gamma)
        return y

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        return *batchnorm_eval_backward(delta, *ctx.saved_tensors), None, None, None


class LayerNormFunction(torch.autograd.Function):
    """Layer norm over the last gamma.dim() dims; backward: the hand-written one."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gamma: Tensor, beta: Tensor, eps: float = EPS) -> Tensor:
        y, x_hat, inv_std = layernorm_forward(x, gamma, beta, eps)
        ctx.save_for_backward(x_hat, inv_std, gamma)
        return y

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        return *layernorm_backward(delta, *ctx.saved_tensors), None


class ScratchBatchNorm(nn.Module):
    """nn.BatchNorm1d/2d's drop-in (same parameter and buffer names, so checkpoints and
    state_dicts carry over) whose passes are the hand-written ones above."""

    def __init__(self, num_features: int, eps: float = EPS, momentum: float = MOMENTUM) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            stats = (self.running_mean, self.running_var, self.eps)
            return BatchNormEvalFunction.apply(x, self.weight, self.bias, *stats)
        with torch.no_grad():
            update_running(self.running_mean, self.running_var, x.detach(), self.momentum)
            self.num_batches_tracked += 1
        return BatchNormFunction.apply(x, self.weight, self.bias, self.eps)


class ScratchLayerNorm(nn.Module):
    """nn.LayerNorm's drop-in (elementwise affine) with the hand-written passes."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = EPS) -> None:
        super().__init__()
        shape = (
            (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        )
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor) -> Tensor:
        return LayerNormFunction.apply(x, self.weight, self.bias, self.eps)
