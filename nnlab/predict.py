"""`nnlab predict`: run a trained detector on image files, draw its boxes, write them as JSON."""

from __future__ import annotations

import json
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
from nnlab.predictions import Predictions, Samples, generate_samples, predict_values
from nnlab.restore import saved_run
from nnlab.tasks.detection import CHECKPOINT_KEY, draw

PREDICTIONS = "predictions"  # <run>/predictions/: drawn images and detections.json
DETECTIONS = "detections.json"
GAN_BUILDER = "nnlab.models.gan.build_gan"
COCO_DATA = "nnlab.data.coco.CocoDataModule"
COCO_RESULTS = "coco_results.json"  # COCO's results format: pycocotools' COCO.loadRes reads it


@dataclass
class Prediction:
    out_dir: Path
    checkpoint: Path
    images: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # image → detections
    coco: tuple[int, int] | None = None  # coco_results.json: images in it, images not annotated


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
    samples: int = 64,
    seed: int = 0,
) -> Prediction | Predictions | Samples:
    """Predict with a trained run, into `out_dir` (default <run>/predictions/): a detection
    run draws its boxes (detect); a GAN draws `samples` new images from noise fixed by `seed`;
    a classifier or regressor writes predictions.csv for the rows, arrays or images given."""
    run_dir, ckpt, checkpoint, cfg = saved_run(target, [], output_dir)
    out_dir = out_dir or (run_dir or ckpt.parent) / PREDICTIONS
    built_by = OmegaConf.select(cfg, "model._target_")
    if built_by == GAN_BUILDER:
        return generate_samples(run_dir, ckpt, checkpoint, cfg, samples, seed, out_dir)
    if not paths:
        raise UserError(
            "Give the inputs to predict on: table files for a data=table run, .npz/.npy files "
            "for data=arrays, images or folders of them for image runs and detectors."
        )
    if built_by != BUILDER:
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
    (boxes as x0, y0, x1, y1 pixels of the original image) into `out_dir`, and for a run on
    COCO data coco_results.json (COCO's results format, with the annotations' own ids)."""
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
        # full precision: rounded boxes would score lower than nnlab eval's
        result.images[str(path)] = [
            {"class": names[int(label) - 1], "label": int(label), "score": score, "box": box}
            for box, label, score in zip(
                found["boxes"][keep].tolist(),
                found["labels"][keep].tolist(),
                found["scores"][keep].tolist(),
                strict=True,
            )
        ]
    runs.write_json(
        out_dir / DETECTIONS,
        {"checkpoint": str(ckpt), "min_score": min_score, "images": result.images},
    )
    if OmegaConf.select(cfg, "data._target_") == COCO_DATA:
        result.coco = _write_coco_results(cfg, result.images, out_dir / COCO_RESULTS)
    return result


def _write_coco_results(
    cfg: DictConfig, images: dict[str, list[dict[str, Any]]], path: Path
) -> tuple[int, int]:
    """COCO's results format for the images the run's annotation files list (image_id and
    category_id as they have them, bbox as x, y, width, height): what pycocotools'
    COCO.loadRes reads. Returns (images written, images not in the annotations)."""
    ids, categories = instantiate(cfg.data).source_ids()
    found, results = 0, []
    for name, detected in images.items():
        image_id = ids.get(str(Path(name).resolve()))
        if image_id is None:
            continue
        found += 1
        for d in detected:
            x0, y0, x1, y1 = d["box"]
            results.append(
                {
                    "image_id": image_id,
                    "category_id": categories[d["label"] - 1],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": d["score"],
                }
            )
    with runs.written_whole(path) as partial:
        partial.write_text(json.dumps(results))
    return found, len(images) - found
