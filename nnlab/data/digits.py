"""scikit-learn's bundled handwritten digits: 1,797 8×8 grey images, 10 classes."""

from __future__ import annotations

from sklearn.datasets import load_digits

from nnlab.data.base import TensorDataModule, split_arrays


class DigitsDataModule(TensorDataModule):
    """Digits as (1, 8, 8) images, split train/val/test by `split_seed`, stratified by class."""

    sample_shape: tuple[int, ...] = (1, 8, 8)
    # Standardize over every axis but the channel: one mean and std for the grey channel.
    norm_dims: tuple[int, ...] = (0, 2, 3)

    def load(self) -> None:
        digits = load_digits()
        images = digits.images.reshape(-1, *self.sample_shape)
        splits = split_arrays(
            images, digits.target, self.val_fraction, self.test_fraction, self.split_seed
        )
        self.splits = self.standardize(splits, dims=self.norm_dims)
        self.class_names = [str(c) for c in digits.target_names]
