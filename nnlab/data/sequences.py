"""Sequence datasets: inputs shaped (time steps, features per step)."""

from __future__ import annotations

from sklearn.datasets import load_digits

from nnlab.data.base import TensorDataModule, split_arrays, standardize


class DigitsSeqDataModule(TensorDataModule):
    """The bundled digits read row by row: 8 steps of 8 pixels each, 10 classes.

    Same samples and the same stratified split as data=digits, so sequence models and image
    models are compared on identical test digits.
    """

    def load(self) -> None:
        digits = load_digits()
        splits = split_arrays(
            digits.images, digits.target, self.val_fraction, self.test_fraction, self.split_seed
        )
        self.splits = standardize(splits, dims=(0, 1, 2))
        self.class_names = [str(c) for c in digits.target_names]
