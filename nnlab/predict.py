"""`nnlab predict`: run a trained detector on image files, draw its boxes, write them as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from nnlab import runs
from nnlab.errors import UserError
from nnlab.images import check_image, read_rgb
from nnlab.models.detection import BUILDER, detections
from nnlab.restore import saved_run
from nnlab.tasks.detection import CHECKPOINT_KEY, draw

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PREDICTIONS = "predictions"  # <run>/predictions/: drawn images and detections.json
DETECTIONS = "detections.json"


@dataclass
class Prediction:
    out_dir: Path
    checkpoint: Path
    images: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # image → detections


def image_files(paths: list[str]) -> list[Path]:
    """Every image named, or inside a named folder (not recursive), in a stable order."""
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UserError(
                    f"The folder {path} holds no images (looked for "
                    f"{', '.join(IMAGE_SUFFIXES)}). Give image files or a folder of them."
                )
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(
                f"No such image file or folder: {given}. Give image files (png, jpg, ...) or "
                f"folders of them, e.g. nnlab predict latest photo.jpg more_photos/."
            )
    if not found:
        raise UserError("Give at least one image file or folder to predict on.")
    # A file named on its own and again through its folder is predicted once.
    return list({p.resolve(): p for p in found}.values())


def load_detector(target: str, output_dir: str = "outputs") -> tuple[Any, list[str], Path, Path]:
    """The trained detector (eval mode), its class names, its run directory (or the
    checkpoint's folder) and the checkpoint; UserError for anything but a detection run."""
    run_dir, ckpt, checkpoint, cfg = saved_run(target, [], output_dir)
    target_of = OmegaConf.select(cfg, "model._target_")
    if target_of != BUILDER or CHECKPOINT_KEY not in checkpoint:
        kind = str(target_of or "unknown").rsplit(".", 1)[-1].removeprefix("build_")
        raise UserError(
            f"nnlab predict draws object detections, but {run_dir or ckpt} is a {kind} run, not "
            f"a detection run. Give a run trained with model=faster_rcnn (nnlab train "
            f"model=faster_rcnn data=shapes), or use nnlab eval for other models."
        )
    names = list(checkpoint[CHECKPOINT_KEY]["class_names"])
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    # The weights file only seeded training; the checkpoint has every weight.
    spec["weights"] = None
    model = instantiate(spec, input_shape=(3,), num_outputs=len(names), _convert_="all")
    state = {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    model.load_state_dict(state)
    model.eval()
    return model, names, run_dir or ckpt.parent, ckpt


def _read(path: Path) -> torch.Tensor:
    return pil_to_tensor(read_rgb(path)).float().div_(255.0)


def predict(
    target: str,
    paths: list[str],
    output_dir: str = "outputs",
    min_score: float = 0.5,
    out_dir: Path | None = None,
) -> Prediction:
    """Detect objects in every image; write <name>.png with boxes drawn and detections.json
    (boxes as x0, y0, x1, y1 pixels of the original image) into `out_dir`
    (default <run>/predictions/)."""
    files = image_files(paths)  # bad paths fail before the model loads
    for path in files:
        check_image(path)  # so do oversized or foreign files: nothing is drawn for any of them
    model, names, run_dir, ckpt = load_detector(target, output_dir)
    out_dir = out_dir or run_dir / PREDICTIONS
    out_dir.mkdir(parents=True, exist_ok=True)
    result = Prediction(out_dir, ckpt)
    used: set[str] = set()
    for path in files:
        image = _read(path)
        found = detections(model, [image])[0]
        keep = found["scores"] >= min_score
        stem = path.stem
        for n in range(1, len(files) + 1):  # same-named images from two folders
            if stem not in used:
                break
            stem = f"{path.stem}-{n}"
        used.add(stem)
        drawn = draw(image, found, names, min_score=min_score)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out_dir / f"{stem}.png")
        result.images[str(path)] = [
            {
                "class": names[int(label) - 1],
                "label": int(label),
                "score": round(float(score), 4),
                "box": [round(float(v), 2) for v in box],
            }
            for box, label, score in zip(
                found["boxes"][keep], found["labels"][keep], found["scores"][keep], strict=True
            )
        ]
    runs.write_json(
        out_dir / DETECTIONS,
        {"checkpoint": str(ckpt), "min_score": min_score, "images": result.images},
    )
    return result
