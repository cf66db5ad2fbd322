"""`nnlab predict`: run a trained detector on image files, draw its boxes, write them as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from nnlab import runs
from nnlab.errors import UserError
from nnlab.images import check_image, image_files, read_rgb
from nnlab.models.detection import BUILDER, detections
from nnlab.predictions import Predictions, predict_values
from nnlab.restore import saved_run
from nnlab.tasks.detection import CHECKPOINT_KEY, draw

PREDICTIONS = "predictions"  # <run>/predictions/: drawn images and detections.json
DETECTIONS = "detections.json"


@dataclass
class Prediction:
    out_dir: Path
    checkpoint: Path
    images: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # image → detections


def load_detector(
    run_dir: Path | None, ckpt: Path, checkpoint: dict[str, Any], cfg: DictConfig
) -> tuple[Any, list[str]]:
    """The trained detector (eval mode) and its class names; UserError when the checkpoint
    lacks what a detection run's holds."""
    if CHECKPOINT_KEY not in checkpoint:
        raise UserError(
            f"{ckpt} is configured as a detection run (model=faster_rcnn) but holds no class "
            f"names: it was not written by nnlab train. Give a checkpoint of a detection run."
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
    return model, names


def _read(path: Path) -> torch.Tensor:
    return pil_to_tensor(read_rgb(path)).float().div_(255.0)


def predict(
    target: str,
    paths: list[str],
    output_dir: str = "outputs",
    min_score: float = 0.5,
    out_dir: Path | None = None,
) -> Prediction | Predictions:
    """Predict with a trained run, into `out_dir` (default <run>/predictions/): a detection
    run draws its boxes (detect); a classifier or regressor writes predictions.csv for the
    rows, arrays or images given (predictions.predict_values)."""
    run_dir, ckpt, checkpoint, cfg = saved_run(target, [], output_dir)
    out_dir = out_dir or (run_dir or ckpt.parent) / PREDICTIONS
    if OmegaConf.select(cfg, "model._target_") != BUILDER:
        return predict_values(run_dir, ckpt, checkpoint, cfg, paths, out_dir)
    return detect(ckpt, checkpoint, cfg, paths, out_dir, min_score, run_dir)


def detect(
    ckpt: Path,
    checkpoint: dict[str, Any],
    cfg: DictConfig,
    paths: list[str],
    out_dir: Path,
    min_score: float,
    run_dir: Path | None = None,
) -> Prediction:
    """Detect objects in every image; write <name>.png with boxes drawn and detections.json
    (boxes as x0, y0, x1, y1 pixels of the original image) into `out_dir`."""
    files = image_files(paths)  # bad paths fail before the model is built
    for path in files:
        check_image(path)  # so do oversized or foreign files: nothing is drawn for any of them
    model, names = load_detector(run_dir, ckpt, checkpoint, cfg)
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
