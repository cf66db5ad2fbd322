"""Quality on signals: a 1-D CNN finds a motif wherever it lies, an MLP does not (issue 21).

The figures in docs/arrays.md come from this test (pytest -m slow tests/test_signal_quality.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import metrics_of

EPOCHS = 20


def write_motif_signals(path, n: int = 3000, length: int = 128, seed: int = 0) -> None:
    """Gaussian noise with one short windowed sine burst at a random place; its frequency
    (1 to 4 cycles in 16 steps) is the class. Where the burst lies carries no information, so
    a model must recognise the shape anywhere: translation invariance is the whole task."""
    rng = np.random.default_rng(seed)
    steps = np.arange(16)
    motifs = [3.0 * np.sin(2 * np.pi * f * steps / 16) * np.hanning(16) for f in (1, 2, 3, 4)]
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, length)).astype(np.float32)
    for i, start in enumerate(rng.integers(0, length - 16, n)):
        x[i, start : start + 16] += motifs[y[i]]
    np.savez(path, x=x, y=y)


@pytest.mark.slow
def test_a_1d_cnn_beats_an_mlp_on_motifs_at_random_places(nnlab, workdir):
    write_motif_signals(workdir / "motifs.npz")
    accuracy = {}
    for model in ("mlp", "cnn"):
        result = nnlab(
            "train",
            "data=arrays",
            "data.path=motifs.npz",
            "data.layout=signal",
            f"model={model}",
            f"trainer.max_epochs={EPOCHS}",
            "trainer.enable_progress_bar=false",
            f"name={model}",
        )
        assert result.exit_code == 0, result.output
        (run,) = (workdir / "outputs" / "runs").glob(f"*_{model}")
        accuracy[model] = metrics_of(run)["test/acc"]
    print(f"test accuracy after {EPOCHS} epochs: {accuracy}")
    assert accuracy["cnn"] >= 0.75, accuracy
    assert accuracy["cnn"] - accuracy["mlp"] >= 0.15, accuracy
