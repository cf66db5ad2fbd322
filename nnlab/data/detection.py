"""What every detection DataModule shares: the batch format and what it tells the model.

A detection batch is (images, targets): images a float tensor (B, C, H, W) in [0, 1] (or a list
of (C, H, W) tensors when sizes differ), targets a list of {"boxes": (n, 4) x0 y0 x1 y1 pixels,
"labels": (n,) int64 in 1..num_classes} — the format torchvision's detectors take. Label 0 is
the background. A target may also carry "crowd_boxes" (m, 4) and "crowd_labels" (m,): COCO's
iscrowd regions (one box over many objects). The detector never sees them (`for_training`), but
the mAP metric does, as COCO's evaluation ignores detections that fall on a crowd region instead
of counting them as false positives.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytorch_lightning as pl
from torch import Tensor

from nnlab.data.base import TensorBatches

Target = dict[str, Tensor]
CROWD_BOXES, CROWD_LABELS = "crowd_boxes", "crowd_labels"


def for_training(targets: list[Target]) -> list[Target]:
    """Only the boxes and labels: a crowd region is no single object for the detector to learn."""
    return [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]


def unpad(boxes: Tensor, labels: Tensor) -> list[Target]:
    """Per-image targets from (B, max_objects, 4) boxes and (B, max_objects) labels, 0 = padding."""
    return [
        {"boxes": b[lab > 0], "labels": lab[lab > 0]} for b, lab in zip(boxes, labels, strict=True)
    ]


class DetectionBatches(TensorBatches):
    """In-memory uint8 images with zero-padded boxes and labels, cut by slicing (no per-sample
    collate), handed out as (float images, list of targets)."""

    def __iter__(self) -> Iterator[tuple[Tensor, list[Target]]]:
        for images, boxes, labels in super().__iter__():
            yield images.float().div_(255.0), unpad(boxes, labels)


class DetectionDataModule(pl.LightningDataModule):
    """Base for detection data: subclasses fill `class_names` (without the background) in
    `setup`, and say what the model needs (`num_outputs` object classes, `input_shape`)."""

    kind = "detection"
    variable_length = False

    def __init__(self, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self.class_names: list[str] = []
        self.channels = 3

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels,)
