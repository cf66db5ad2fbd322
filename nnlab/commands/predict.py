"""`nnlab predict`: a trained run's predictions for new inputs: classes or values for rows,
arrays and images; drawn boxes for detection."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from nnlab.console import out, print_wide, user_errors


def predict(
    target: str = typer.Argument(..., help="Trained run (directory, name, .ckpt, 'latest')."),
    inputs: list[str] = typer.Argument(
        ..., help="Tables (table runs), .npz/.npy files (arrays runs), images or folders."
    ),
    min_score: float = typer.Option(0.5, min=0.0, max=1.0, help="Keep detections this sure."),
    out_dir: Path | None = typer.Option(None, help="Where to write [<run>/predictions/]."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Predict with a trained run. A run on data=table, data=arrays or data=image_folder writes
    predictions.csv: each input (file, and row or index in it), the predicted class (with every
    class's probability) or value, the inputs scaled and encoded as in training. A detection
    run (model=faster_rcnn) writes each image with its boxes drawn, and detections.json (class,
    score, box as x0 y0 x1 y1 pixels) per image.

    Images over 64 megapixels (raise with NNLAB_MAX_IMAGE_PIXELS), or not PNG, JPEG, BMP, GIF,
    TIFF, WebP or PPM, are refused before anything is decoded.

    Examples:

      nnlab predict latest new_customers.csv

      nnlab predict latest signals.npz

      nnlab predict latest photo.png

      nnlab predict outputs/runs/<run> images/ --min-score 0.8

      nnlab predict latest street.jpg --out-dir drawn/
    """
    with user_errors():
        from nnlab.predict import DETECTIONS
        from nnlab.predict import predict as run_predict
        from nnlab.predictions import Predictions

        result = run_predict(target, inputs, str(output_dir), min_score, out_dir)
    if isinstance(result, Predictions):
        _show_values(result)
        return
    table = Table(title=f"detections (score ≥ {min_score})", header_style="bold")
    for column in ("image", "objects", "classes"):
        table.add_column(column, justify="right" if column == "objects" else "left")
    for image, found in result.images.items():
        classes = sorted({d["class"] for d in found})
        table.add_row(image, str(len(found)), ", ".join(classes))
    print_wide(table)
    out.print(f"Drawn images and {DETECTIONS}: {result.out_dir}", highlight=False, soft_wrap=True)


SHOWN = 10  # rows of predictions shown on the terminal; the file has them all


def _show_values(result) -> None:
    table = Table(title=f"predictions (first {SHOWN})", header_style="bold")
    for column in ("input", "item", "prediction"):
        table.add_column(column)
    for row in result.rows[:SHOWN]:
        table.add_row(row["input"], row["item"], row["prediction"])
    print_wide(table)
    count = len(result.rows)
    out.print(f"{count} predictions: {result.path}", highlight=False, soft_wrap=True)
