"""`nnlab predict`: detect objects in images with a trained detection run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from nnlab.console import out, print_wide, user_errors


def predict(
    target: str = typer.Argument(..., help="Detection run (directory, name, .ckpt, 'latest')."),
    images: list[str] = typer.Argument(..., help="Image files or folders of images."),
    min_score: float = typer.Option(0.5, min=0.0, max=1.0, help="Keep detections this sure."),
    out_dir: Path | None = typer.Option(None, help="Where to write [<run>/predictions/]."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Detect objects with a trained model=faster_rcnn run: writes each image with its boxes
    drawn, and detections.json (class, score, box as x0 y0 x1 y1 pixels) per image.

    Images over 64 megapixels (raise with NNLAB_MAX_IMAGE_PIXELS), or not PNG, JPEG, BMP, GIF,
    TIFF, WebP or PPM, are refused before anything is decoded.

    Examples:

      nnlab predict latest photo.png

      nnlab predict outputs/runs/<run> images/ --min-score 0.8

      nnlab predict latest street.jpg --out-dir drawn/
    """
    with user_errors():
        from nnlab.predict import DETECTIONS
        from nnlab.predict import predict as run_predict

        result = run_predict(target, images, str(output_dir), min_score, out_dir)
    table = Table(title=f"detections (score ≥ {min_score})", header_style="bold")
    for column in ("image", "objects", "classes"):
        table.add_column(column, justify="right" if column == "objects" else "left")
    for image, found in result.images.items():
        classes = sorted({d["class"] for d in found})
        table.add_row(image, str(len(found)), ", ".join(classes))
    print_wide(table)
    out.print(f"Drawn images and {DETECTIONS}: {result.out_dir}", highlight=False, soft_wrap=True)
