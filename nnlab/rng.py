"""Random-number states in checkpoints: a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

KEY = "nnlab_rng"


def save_rng_states(checkpoint: dict[str, Any]) -> None:
    """Adds torch's, numpy's and Python's random states to the checkpoint. Checkpoints are
    written at epoch ends, after validation, where nothing else draws random numbers before the
    next epoch: restoring these states makes dropout and augmentation in the resumed epochs
    identical. (Batch order has its own seeded generator per epoch.)"""
    # tensors and plain numbers only: Lightning loads checkpoints with weights_only=True
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    checkpoint[KEY] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        # 625 ints as one tensor: pickled one by one, they cost more than the model's weights
        "python": [version, torch.tensor(internal, dtype=torch.int64), python_gauss],
    }


def restore_rng_states(checkpoint: dict[str, Any]) -> None:
    """Sets the random states a checkpoint holds, if it holds them."""
    states = checkpoint.get(KEY)
    if states:
        torch.set_rng_state(states["torch"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(int(i) for i in internal), gauss))
