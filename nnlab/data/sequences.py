"""Sequence datasets: inputs shaped (time steps, features per step)."""

from __future__ import annotations

from nnlab.data.digits import DigitsDataModule


class DigitsSeqDataModule(DigitsDataModule):
    """The bundled digits read row by row: 8 steps of 8 pixels each, 10 classes.

    Same samples and the same stratified split as data=digits, so sequence models and image
    models are compared on identical test digits.
    """

    sample_shape = (8, 8)
    norm_dims = (0, 1, 2)
