"""Sequence datasets: inputs shaped (time steps, features per step)."""

from __future__ import annotations

import math
from typing import Any

import torch

from nnlab.data.base import TensorDataModule
from nnlab.data.digits import DigitsDataModule
from nnlab.errors import UserError


class DigitsSeqDataModule(DigitsDataModule):
    """The bundled digits read row by row: 8 steps of 8 pixels each, 10 classes.

    Same samples and the same stratified split as data=digits, so sequence models and image
    models are compared on identical test digits.
    """

    sample_shape = (8, 8)
    norm_dims = (0, 1, 2)


class GeneratedSequences(TensorDataModule):
    """A seeded synthetic sequence-regression dataset: `samples` generated once from `data_seed`
    (the same seed always gives the same data), cut into train/val/test by the fractions."""

    kind = "regression"

    def __init__(
        self,
        samples: int = 10_000,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        data_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, data_seed, seed)
        self.samples = samples

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(x, y) or (x, y, lengths) for n samples."""
        raise NotImplementedError

    def load(self) -> None:
        tensors = self.generate(self.samples, torch.Generator().manual_seed(self.split_seed))
        n_test = round(self.samples * self.test_fraction)
        n_val = round(self.samples * self.val_fraction)
        cuts = (0, self.samples - n_val - n_test, self.samples - n_test, self.samples)
        self.splits = {
            name: tuple(t[start:end] for t in tensors)
            for name, start, end in zip(("train", "val", "test"), cuts, cuts[1:], strict=False)
        }


class AddingDataModule(GeneratedSequences):
    """The adding problem (Hochreiter & Schmidhuber, 1997), the classic long-memory test.

    Each step carries a random value in [0, 1) and a marker; exactly two steps are marked, one in
    each half of the sequence, and the target is the sum of the two marked values. Always
    answering 1 scores MSE ≈ 0.167, so MSE < 0.01 means the network carried both values across
    the sequence. With `min_length` < `length`, sequence lengths vary uniformly between them,
    padded with zeros to `length` (batches then carry the lengths, and model=rnn packs them).
    """

    def __init__(self, length: int = 50, min_length: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.length = length
        self.min_length = length if min_length is None else min_length
        if not 2 <= self.min_length <= length:
            raise UserError(
                f"data.min_length={self.min_length} must lie between 2 and data.length={length} "
                f"(equal to length, or null, for sequences all of one length)."
            )

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        lengths = torch.randint(self.min_length, self.length + 1, (n,), generator=generator)
        values = torch.rand(n, self.length, generator=generator)
        steps = torch.arange(self.length)
        values = values * (steps < lengths[:, None])  # padding is zero
        half = lengths // 2
        first = (torch.rand(n, generator=generator) * half).long()
        second = half + (torch.rand(n, generator=generator) * (lengths - half)).long()
        markers = torch.zeros(n, self.length)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        x = torch.stack([values, markers], dim=2)
        y = (values[rows, first] + values[rows, second]).unsqueeze(1)
        if self.min_length == self.length:
            return x, y
        return x, y, lengths


class SineDataModule(GeneratedSequences):
    """Noisy multi-step forecasting: read `window` steps of a noisy sum of two sines (random
    amplitudes, frequencies and phases per sample), predict the next `horizon` observed values.

    The noise cannot be forecast, so `noise`² is the lowest test MSE any model can reach.
    """

    def __init__(
        self, window: int = 40, horizon: int = 10, noise: float = 0.1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.window, self.horizon, self.noise = window, horizon, noise

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, 2, 1, generator=generator)

        amplitude, frequency = uniform(0.5, 1.0), uniform(0.02, 0.1)
        phase = uniform(0.0, 2 * math.pi)
        t = torch.arange(self.window + self.horizon, dtype=torch.float32)
        clean = (amplitude * torch.sin(2 * math.pi * frequency * t + phase)).sum(dim=1)
        series = clean + self.noise * torch.randn(clean.shape, generator=generator)
        return series[:, : self.window, None], series[:, self.window :]
