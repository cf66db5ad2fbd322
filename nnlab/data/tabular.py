"""scikit-learn's bundled tabular classification sets: iris, wine, breast_cancer."""

from __future__ import annotations

from sklearn import datasets

from nnlab.data.base import TensorDataModule, split_arrays
from nnlab.errors import choice_error

LOADERS = {
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
}


class TabularDataModule(TensorDataModule):
    """Feature vectors standardized with training-split statistics; stratified splits."""

    def __init__(
        self,
        dataset: str = "iris",
        batch_size: int = 32,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, split_seed, seed)
        if dataset not in LOADERS:
            raise choice_error("tabular dataset", dataset, LOADERS)
        self.dataset = dataset

    def load(self) -> None:
        bunch = LOADERS[self.dataset]()
        splits = split_arrays(
            bunch.data, bunch.target, self.val_fraction, self.test_fraction, self.split_seed
        )
        self.splits = self.standardize(splits, dims=(0,))
        self.class_names = [str(c) for c in bunch.target_names]
