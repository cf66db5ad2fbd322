"""`nnlab predict`: a trained run's predictions for new inputs: classes or values for rows,
arrays and images; drawn boxes for detection."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from nnlab import run_log, runs
from nnlab.commands import run_argument
from nnlab.console import out, print_wide, user_errors


def predict(
    target: str = run_argument(),
    inputs: list[str] | None = typer.Argument(
        None, help="Tables (table runs), .npz/.npy files (arrays runs), images or folders."
    ),
    min_score: float = typer.Option(0.5, min=0.0, max=1.0, help="Keep detections this sure."),
    out_dir: Path | None = typer.Option(None, help="Where to write [<run>/predictions/]."),
    samples: int = typer.Option(64, min=1, max=10_000, help="GAN runs: how many images."),
    seed: int = typer.Option(0, min=0, help="GAN runs: fixes the noise the images come from."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Predict with a trained run. A run on data=table, data=arrays or data=image_folder writes
    predictions.csv: each input (file, and row or index in it), the predicted class (with every
    class's probability) or value, the inputs scaled and encoded as in training. A detection
    run (model=faster_rcnn) writes each image with its boxes drawn, and detections.json (class,
    score, box as x0 y0 x1 y1 pixels) per image. A GAN run takes no inputs: it writes
    samples.png (a grid) and samples.npz (x: uint8 images, N × C × H × W) of --samples new
    images.

    Images over 64 megapixels (raise with NNLAB_MAX_IMAGE_PIXELS), or not PNG, JPEG, BMP, GIF,
    TIFF, WebP or PPM, are refused before anything is decoded.

    Examples:

      nnlab predict latest new_customers.csv

      nnlab predict latest signals.npz

      nnlab predict latest photo.png

      nnlab predict latest --samples 256 --seed 1       # a GAN run

      nnlab predict outputs/runs/<run> images/ --min-score 0.8

      nnlab predict latest street.jpg --out-dir drawn/
    """
    with user_errors():
        home = runs.home_of(target, str(output_dir))  # a wrong run: answered before torch loads
        from nnlab.startup import heavy_imports

        with heavy_imports():
            from nnlab.predict import COCO_RESULTS, DETECTIONS
            from nnlab.predict import predict as run_predict
            from nnlab.predictions import Predictions, Samples

        with run_log.captured(home):
            result = run_predict(
                target, inputs or [], str(output_dir), min_score, out_dir, samples, seed
            )
    if isinstance(result, Predictions):
        _show_values(result)
        return
    if isinstance(result, Samples):
        shown = f"{result.count} samples: {result.grid} and {result.arrays}"
        out.print(shown, highlight=False, markup=False, soft_wrap=True)
        return
    table = Table(title=f"detections (score ≥ {min_score})", header_style="bold")
    for column in ("image", "objects", "classes"):
        # an image's path whole, even with spaces in it: folded, it could not be copied
        justify = "right" if column == "objects" else "left"
        table.add_column(column, justify=justify, no_wrap=column == "image")
    for image, found in result.images.items():
        classes = sorted({d["class"] for d in found})
        table.add_row(escape(image), str(len(found)), escape(", ".join(classes)))
    print_wide(table)
    out.print(f"Drawn images and {DETECTIONS}: {result.out_dir}", highlight=False, soft_wrap=True)
    if result.coco is not None:
        written, unknown = result.coco
        left = f"; {unknown} not in the run's annotations left out" if unknown else ""
        out.print(f"{COCO_RESULTS}: {written} images with their COCO ids{left}", soft_wrap=True)


SHOWN = 10  # rows of predictions shown on the terminal; the file has them all


def _show_values(result) -> None:
    table = Table(title=f"predictions (first {SHOWN})", header_style="bold")
    for column in ("input", "item", "prediction"):
        table.add_column(column, no_wrap=column == "input")  # a path whole (print_wide)
    for row in result.rows[:SHOWN]:
        table.add_row(*(escape(row[column]) for column in ("input", "item", "prediction")))
    print_wide(table)
    count = len(result.rows)
    out.print(f"{count} predictions: {result.path}", highlight=False, soft_wrap=True)


EXPORT_FORMATS = ("onnx", "torchscript", "export")  # nnlab.export.FILES names their files


def export(
    target: str = run_argument(),
    fmt: str = typer.Option(
        "onnx", "--format", help="onnx, torchscript, or export (a torch.export .pt2 program)."
    ),
    out_dir: Path | None = typer.Option(None, help="Where to write [<run>/export/]."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Export a trained run's network, with model.json beside it: the input's shape and dtype,
    the run's preprocessing (scaling statistics, a table's columns and vocabularies, image
    size), the classes or what the outputs mean, and the source checkpoint. The export is
    then run on held-out inputs (the run's test split) and compared with the PyTorch network:
    the largest difference is printed, and outside the tolerance nothing is written (exit 1).

    ONNX is checked with onnxruntime and needs the extra: pip install "nnlab[export]". A GAN
    exports its generator (noise in, samples out); a detector (model=faster_rcnn) exports as
    onnx or torchscript.

    Examples:

      nnlab export latest

      nnlab export latest --format torchscript

      nnlab export outputs/runs/<run> --format export --out-dir deploy/
    """
    from nnlab.console import stop
    from nnlab.errors import choice_error

    with user_errors():
        if fmt not in EXPORT_FORMATS:
            raise choice_error("export format", fmt, EXPORT_FORMATS)
        home = runs.home_of(target, str(output_dir))  # a wrong run: answered before torch loads
        from nnlab.startup import heavy_imports

        with heavy_imports():
            from nnlab.export import MODEL_JSON, TOLERANCE_RULE
            from nnlab.export import export as run_export

        with run_log.captured(home):
            result = run_export(target, fmt, str(output_dir), out_dir)
    table = Table(title=f"{fmt} export checked against PyTorch", header_style="bold")
    for column in ("compared", "largest |difference|", "tolerance", "result"):
        table.add_column(column, justify="left" if column == "compared" else "right")
    verdict = "match" if result.passed else "[bold red]differs[/]"
    compared = escape(f"{result.samples} {result.held_out}")
    table.add_row(compared, f"{result.max_diff:.3g}", f"{result.tolerance:.3g}", verdict)
    print_wide(table)
    if not result.passed:
        stop(
            f"[bold red]Error:[/] the {fmt} export's outputs differ from the PyTorch network's by "
            f"up to {result.max_diff:.3g}, beyond the tolerance {result.tolerance:.3g} "
            f"({TOLERANCE_RULE}). Nothing was written to {escape(str(result.path.parent))}. "
            f"Try another --format, or another torch version.",
            1,
        )
    where = f"{result.path} (described in {result.path.parent / MODEL_JSON})"
    out.print(f"Exported: {where}", highlight=False, soft_wrap=True)
