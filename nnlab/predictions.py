"""`nnlab predict` for classifiers and regressors: new rows, arrays or images in, a table of
predictions out, the inputs scaled by what the run's data learned in training."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from nnlab import runs
from nnlab.build import build, build_network
from nnlab.errors import UserError
from nnlab.restore import load_weights, saved_preprocessing
from nnlab.tasks.gan import sample_grid, to_unit
from nnlab.tasks.supervised import SupervisedTask

PREDICTIONS_CSV = "predictions.csv"
SAMPLES_PNG = "samples.png"  # a GAN run's grid of new samples
SAMPLES_NPZ = "samples.npz"  # and the samples themselves: x, uint8 (N, C, H, W)


@dataclass
class Predictions:
    path: Path  # the CSV written
    rows: list[dict[str, str]]  # as written: input, item, prediction, then per class / output


def predict_values(
    run_dir: Path | None,
    ckpt: Path,
    checkpoint: dict,
    cfg,
    paths: list[str],
    out_dir: Path,
) -> Predictions:
    """Predict every input in `paths` with the checkpoint's model; writes predictions.csv into
    `out_dir`: the input file, the item in it (row, index; empty for an image), the prediction
    (class name or value), then each class's probability or each output's value."""
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build(cfg, saved_preprocessing(run_dir, checkpoint))
    if not isinstance(task, SupervisedTask):
        raise UserError(
            f"nnlab predict writes classes or values for classification and regression runs, "
            f"samples for GAN runs and drawings for detection runs; {run_dir or ckpt} is a "
            f"{type(task).__name__} run."
        )
    ids, x = datamodule.inputs(paths)
    load_weights(task, checkpoint, ckpt)
    outputs = _outputs(task.model, x, datamodule.batch_size)
    rows = _rows(ids, outputs, datamodule.class_names, datamodule.kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    with runs.written_whole(out_dir / PREDICTIONS_CSV) as partial:
        with open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return Predictions(out_dir / PREDICTIONS_CSV, rows)


def _outputs(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()  # dropout off, batch norm by its running statistics
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _rows(
    ids: list[tuple[str, str]], outputs: torch.Tensor, classes: list[str], kind: str
) -> list[dict[str, str]]:
    rows = []
    if kind == "classification":
        probabilities = outputs.softmax(dim=1)
        for (source, item), p in zip(ids, probabilities.tolist(), strict=True):
            best = max(range(len(p)), key=p.__getitem__)
            row = {"input": source, "item": item, "prediction": classes[best]}
            row.update(
                {f"p_{name}": f"{value:.6g}" for name, value in zip(classes, p, strict=True)}
            )
            rows.append(row)
        return rows
    values = outputs.reshape(len(outputs), -1).tolist()
    for (source, item), v in zip(ids, values, strict=True):
        row = {"input": source, "item": item, "prediction": f"{v[0]:.6g}"}
        if len(v) > 1:  # several targets (a forecast horizon): every one
            row.update({f"output_{k}": f"{value:.6g}" for k, value in enumerate(v)})
        rows.append(row)
    return rows


@dataclass
class Samples:
    grid: Path  # samples.png
    arrays: Path  # samples.npz
    count: int


def generate_samples(
    run_dir: Path | None, ckpt: Path, checkpoint: dict, cfg, count: int, seed: int, out_dir: Path
) -> Samples:
    """`count` new images from a GAN run's generator (its moving average when the run kept
    one), drawn from noise fixed by `seed`: samples.png (a grid) and samples.npz (x: uint8,
    (N, C, H, W), in the training images' range)."""
    from torchvision.utils import save_image

    _, gan = build_network(cfg, saved_preprocessing(run_dir, checkpoint))
    state = checkpoint["state_dict"]
    # the moving average of G's weights (model.ema > 0), else G itself: what training sampled
    ema = any(k.startswith("g_ema.module.") for k in state)
    prefix = "g_ema.module." if ema else "model.generator."
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    try:
        gan.generator.load_state_dict(weights)
    except RuntimeError as err:
        raise UserError(
            f"{ckpt} does not fit the generator its config builds ({str(err).splitlines()[0]}). "
            f"Give a checkpoint written by nnlab train for this run."
        ) from None
    gan.generator.eval()  # batch norm by its running statistics
    with torch.inference_mode():
        noise = gan.noise(count, torch.Generator().manual_seed(seed))
        unit = to_unit(gan.generator(noise))
    images = (unit * 255).round().to(torch.uint8)
    out_dir.mkdir(parents=True, exist_ok=True)
    with runs.written_whole(out_dir / SAMPLES_PNG) as partial:
        save_image(sample_grid(unit), partial, format="png")
    with runs.written_whole(out_dir / SAMPLES_NPZ) as partial:
        with open(partial, "wb") as f:
            np.savez(f, x=images.numpy())
    return Samples(out_dir / SAMPLES_PNG, out_dir / SAMPLES_NPZ, count)
