"""The figures nnlab draws as PNG files: a run's plots/ as it ends, and `nnlab compare`'s overlay.

The drawing functions take plain numbers (lists, numpy arrays) and draw with matplotlib's
object API on the Agg canvas: no pyplot, no global backend, nothing shown. matplotlib is
imported only when a figure is drawn, and torch and Lightning only by save_run_plots, which
reads them from a trainer that has them loaded already."""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnlab import runs
from nnlab.errors import Notice

LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
PRECISION_RECALL = "precision_recall.png"
SAMPLES = "samples_over_training.png"
GRAD_NORMS = "grad_norms.png"
PREFERRED = ("acc", "mae", "map_50", "sample_score")  # each task's main metric, first found
SHOWN_ROWS = 10  # epochs drawn at most in the samples and gradient plots
ANNOTATED = 20  # confusion matrices up to this many classes get their counts written in


class PlotWarning(Notice):
    """A figure could not be drawn; the run itself is unaffected."""


# -- metrics.csv --------------------------------------------------------------------------------
def read_epochs(path: Path) -> dict[str, list[float]]:
    """A run's metrics.csv as columns of numbers, NaN where a cell is empty or not a number.
    OSError when it cannot be read, ValueError when it is not a metrics.csv."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        names = [n for n in reader.fieldnames or [] if isinstance(n, str)]
    if "epoch" not in names:
        raise ValueError(f"{path} has no epoch column")
    return {name: [_number(row.get(name)) for row in rows] for name in names}


def _number(cell: Any) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


def _metric_names(columns: dict[str, Any]) -> set[str]:
    return {k.split("/", 1)[1] for k in columns if k.startswith(("train/", "val/"))}


def loss_names(columns: dict[str, Any]) -> list[str]:
    """The losses to plot: `loss` when logged (detection's parts add up to it), else each one
    (a GAN's loss_d and loss_g)."""
    names = _metric_names(columns)
    return ["loss"] if "loss" in names else sorted(n for n in names if n.startswith("loss"))


def main_metric(columns: dict[str, Any]) -> str | None:
    """The task's metric besides its loss: acc, mae, map_50 or sample_score, else the first."""
    names = _metric_names(columns) - {"lr"}
    others = sorted(n for n in names if not runs.lower_is_better(n))
    return next((n for n in PREFERRED if n in names), others[0] if others else None)


def _series(columns: dict[str, list[float]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one column, the epochs where it has a value."""
    pairs = [(e, v) for e, v in zip(columns["epoch"], columns.get(key, []), strict=False)]
    kept = [(e, v) for e, v in pairs if math.isfinite(v) and math.isfinite(e)]
    return [e for e, _ in kept], [v for _, v in kept]


# -- drawing ------------------------------------------------------------------------------------
def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, list[Any]]:
    """A figure on the Agg canvas and its axes, row by row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(figure.subplots(rows, cols, squeeze=False).ravel())


def _epoch_axis(ax: Any, epochs: list[float]) -> None:
    """Whole epochs, over every epoch trained: a metric validated once is a point among them."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    known = [e for e in epochs if math.isfinite(e)]
    if known:
        low, high = min(known), max(known)
        margin = max(0.5, 0.03 * (high - low))
        ax.set_xlim(low - margin, high + margin)


def _save(figure: Any, path: Path, kind: str = "png") -> None:
    # the format by name: `path` is written beside its final name, with a .tmp ending
    figure.savefig(path, format=kind, dpi=100)


def learning_curves(columns: dict[str, list[float]], path: Path) -> None:
    """Loss and the task's metric per epoch, train (solid) against val (dashed)."""
    metric = main_metric(columns)
    panels = [("loss", loss_names(columns)), *([(metric, [metric])] if metric else [])]
    figure, axes = _figure(5 * len(panels), 3.8, cols=len(panels))
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            for stage, style in (("train", "-"), ("val", "--")):
                epochs, values = _series(columns, f"{stage}/{name}")
                if values:
                    marker = "." if len(values) < 30 else None
                    ax.plot(epochs, values, style, marker=marker, label=f"{stage}/{name}")
        ax.set_title(title)
        _epoch_axis(ax, columns["epoch"])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if not any(ax.lines for ax in axes):
        raise ValueError("metrics.csv holds no train/ or val/ values")
    _save(figure, path)


def confusion_matrix(counts: list[list[int]], class_names: list[str], path: Path) -> None:
    """Test-split counts: rows the true class, columns the predicted one."""
    import numpy as np

    matrix = np.asarray(counts, dtype=np.int64)
    n = len(matrix)
    size = min(4 + 0.4 * n, 14)
    figure, (ax,) = _figure(size + 1, size)
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8)
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    title = f"test split: {matrix.sum()} samples, accuracy {accuracy:.4f}"
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 3 * ANNOTATED:
        ax.set_xticks(range(n), class_names[:n], rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), class_names[:n])
    if n <= ANNOTATED:
        dark = matrix.max() / 2
        for (i, j), count in np.ndenumerate(matrix):
            colour = "white" if count > dark else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=colour)
    _save(figure, path)


def precision_recall(curves: dict[str, list[float]], path: Path) -> None:
    """Per class, precision at each recall from 0 to 1 (COCO's 101 thresholds, IoU 0.5)."""
    import numpy as np

    figure, (ax,) = _figure(6.5, 5)
    for name, precision in curves.items():
        values = np.asarray(precision, dtype=np.float64)
        recall = np.linspace(0, 1, len(values))
        ap = values.clip(min=0).mean()  # COCO's AP: precision averaged over the thresholds
        ax.plot(recall, np.where(values < 0, np.nan, values), label=f"{name} (AP50 {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("test split: precision-recall per class, IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    _save(figure, path)


def sample_strip(frames: dict[int, Any], path: Path) -> None:
    """One row per epoch of the same noise's samples: (n, C, H, W) uint8 arrays."""
    import numpy as np

    epochs = _spread(sorted(frames), SHOWN_ROWS)
    first = np.asarray(frames[epochs[0]])
    n, height, width = first.shape[0], first.shape[2], first.shape[3]
    figure, axes = _figure(min(1.2 * n, 12), 0.4 + 1.2 * len(epochs) * height / width, len(epochs))
    for ax, epoch in zip(axes, epochs, strict=True):
        images = np.asarray(frames[epoch])  # (n, C, H, W)
        padded = np.pad(images, ((0, 0), (0, 0), (0, 0), (0, 1)), constant_values=128)
        row = np.concatenate(list(padded), axis=2).transpose(1, 2, 0)  # H, n·(W+1), C
        gray = row.shape[2] == 1
        shown = row[..., 0] if gray else row
        ax.imshow(shown, cmap="gray" if gray else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"epoch {epoch}", rotation=0, ha="right", va="center")
    figure.suptitle("generated samples over training (the same noise each epoch)")
    _save(figure, path)


def grad_norms(history: list[tuple[int, dict[str, float]]], path: Path) -> None:
    """Mean gradient norm per layer, input to output, one line per epoch (log scale)."""
    from matplotlib import colormaps

    shown = _spread(history, SHOWN_ROWS)
    layers = list(shown[-1][1])
    figure, (ax,) = _figure(max(6, 0.45 * len(layers) + 2), 4.5)
    colours = colormaps["viridis"]
    for i, (epoch, norms) in enumerate(shown):
        values = [max(norms.get(layer, math.nan), 1e-30) for layer in layers]
        colour = colours(i / max(len(shown) - 1, 1))
        ax.plot(range(len(layers)), values, marker="o", label=f"epoch {epoch}", color=colour)
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize="small")
    ax.set(ylabel="mean ‖∂C/∂w‖ over the epoch", title="gradient norm per layer (input → output)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    _save(figure, path)


def overlay(curves: dict[str, dict[str, list[float]]], path: Path, kind: str = "png") -> list[str]:
    """`nnlab compare`'s figure: per epoch, the main metric's and the loss's val curve (train
    where no run validated), one line per run, keyed by its label. Returns the keys drawn."""
    union: dict[str, Any] = {k: None for columns in curves.values() for k in columns}
    metric, losses = main_metric(union), loss_names(union)
    wanted = [name for name in (metric, losses[0] if losses else None) if name]
    keys = [_first_present(union, name) for name in wanted]
    if not keys:
        raise ValueError("no run's metrics.csv has a metric to draw")
    figure, axes = _figure(5 * len(keys), 3.8, cols=len(keys))
    for ax, key in zip(axes, keys, strict=True):
        for label, columns in curves.items():
            epochs, values = _series(columns, key)
            if values:
                ax.plot(epochs, values, marker="." if len(values) < 30 else None, label=label)
        ax.set_title(key)
        _epoch_axis(ax, [e for columns in curves.values() for e in columns["epoch"]])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    _save(figure, path, kind)
    return keys


def _first_present(columns: dict[str, Any], name: str) -> str:
    return f"val/{name}" if f"val/{name}" in columns else f"train/{name}"


def _spread(items: list[Any], most: int) -> list[Any]:
    """At most `most` of `items`, evenly spread, the first and last kept."""
    if len(items) <= most:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (most - 1)) for i in range(most)})
    return [items[i] for i in picks]


# -- a run's plots/ -----------------------------------------------------------------------------
def save_run_plots(run_dir: Path, trainer: Any) -> list[Path]:
    """Every figure a finished run has the numbers for, in <run>/plots/; returns those written.
    A figure that fails is a warning: plots never fail a run."""
    from nnlab.callbacks.grad_flow import GradientFlow
    from nnlab.callbacks.sample_strip import SampleStrip

    task = trainer.lightning_module
    drawings: dict[str, Callable[[Path], None]] = {
        LEARNING_CURVES: lambda p: learning_curves(read_epochs(run_dir / runs.METRICS_CSV), p)
    }
    if getattr(task, "confusion", None):
        drawings[CONFUSION_MATRIX] = lambda p: confusion_matrix(task.confusion, task.class_names, p)
    if getattr(task, "test_pr", None):
        drawings[PRECISION_RECALL] = lambda p: precision_recall(task.test_pr, p)
    for callback in trainer.callbacks:
        if isinstance(callback, GradientFlow) and callback.history:
            drawings[GRAD_NORMS] = lambda p, h=callback.history: grad_norms(h, p)
        if isinstance(callback, SampleStrip) and callback.frames:
            drawings[SAMPLES] = lambda p, f=callback.frames: sample_strip(
                {epoch: image.numpy() for epoch, image in f.items()}, p
            )
    paths = {run_dir / runs.PLOTS / name: draw for name, draw in drawings.items()}
    return [path for path, draw in paths.items() if draw_safely(path, draw)]


def draw_safely(path: Path, draw: Callable[[Path], None]) -> bool:
    """Draws into `path` (whole or not at all); False, with a warning, when that fails."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with runs.written_whole(path) as partial:
            draw(partial)
        return True
    except Exception as err:  # a plot is an extra: whatever went wrong, the run stands
        warnings.warn(
            f"Could not draw {path}: {type(err).__name__}: {err}. The run's other files are "
            f"unaffected.",
            PlotWarning,
            stacklevel=2,
        )
        return False
