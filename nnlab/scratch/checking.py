"""What every `nnlab check` compares and reports: a hand-written gradient (or update) against
autograd's (or torch.optim's), per parameter, in float64.

Each topic module (conv, pool, norm, gated cells, residual, optim) offers `check_<topic>()`
returning a list of `Row`s, one per (case, parameter); `nnlab check <topic>` prints them as a
table and fails when any error reaches TOLERANCE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TOLERANCE = 1e-6  # float64 agreement demanded of the hand-written math
DTYPE = torch.float64


@dataclass(frozen=True)
class Row:
    """One parameter's (or input's) gradient in one case: `case` names the shape and settings
    (for example "N=2 C=3 H=7 k=3 stride=2 pad=1"), `param` the tensor (∂C/∂w, ∂C/∂x, ...)."""

    case: str
    param: str
    error: float

    @property
    def passed(self) -> bool:
        return self.error < TOLERANCE


def relative_error(mine: Tensor, reference: Tensor) -> float:
    """max |mine − reference| / max |reference|: scale-free, so tiny gradients count alike."""
    scale = reference.abs().max().clamp_min(1e-12)
    return float((mine - reference).abs().max() / scale)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape: int) -> Tensor:
    """float64 normal samples from `gen`: every check is reproducible."""
    return torch.randn(*shape, generator=gen, dtype=DTYPE)
