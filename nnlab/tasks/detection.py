"""Detection task: torchvision's Faster R-CNN losses, COCO mAP, boxes drawn for TensorBoard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FasterRCNN
from torchvision.utils import draw_bounding_boxes, make_grid

from nnlab.data.detection import CROWD_BOXES, CROWD_LABELS, Target, for_training
from nnlab.tasks.optim import Schedule, configure
from nnlab.tasks.supervised import LeanModule

# torchvision's names for the four Faster R-CNN losses (RPN: objectness, rpn_box_reg).
LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
VALIDATED = ("map", "map_50")  # the mAP scores logged each validation (val/...)
TESTED = ("map", "map_50", "map_75", "mar_100")  # and at the test, with AP per class (test/...)
SHOWN = 8  # validation images drawn for TensorBoard each epoch
SHOW_SCORE = 0.5  # predictions drawn need at least this score
TRUTH, PREDICTED = (0, 200, 0), (230, 20, 20)
DRAWN_SIDE = 256  # TensorBoard's drawings are scaled up to at least this many pixels a side
CHECKPOINT_KEY = "detection"  # class names go into every checkpoint under this key

Batch = tuple[Tensor | list[Tensor], list[Target]]


def metric_targets(targets: list[Target]) -> list[Target]:
    """Targets as MeanAveragePrecision takes them: each image's crowd regions appended to its
    boxes with iscrowd=1, so that (as in COCO's evaluation) a detection matched to a crowd region
    is ignored rather than counted as a false positive."""
    scored = []
    for t in targets:
        crowd_boxes = t.get(CROWD_BOXES, t["boxes"].new_zeros((0, 4)))
        crowd_labels = t.get(CROWD_LABELS, t["labels"].new_zeros(0))
        iscrowd = torch.cat([torch.zeros_like(t["labels"]), torch.ones_like(crowd_labels)])
        scored.append(
            {
                "boxes": torch.cat([t["boxes"], crowd_boxes]),
                "labels": torch.cat([t["labels"], crowd_labels]),
                "iscrowd": iscrowd,
            }
        )
    return scored


def draw(
    image: Tensor,
    prediction: Target,
    class_names: list[str],
    truth: Target | None = None,
    min_score: float = SHOW_SCORE,
    scale: int = 1,
) -> Tensor:
    """A uint8 copy of `image` (float in [0, 1]), `scale` times larger (nearest pixel), with
    the ground truth in green and predictions scoring at least `min_score` in red, labelled
    with class name and score in white on red."""
    canvas = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    canvas = canvas.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    width = 2 if min(canvas.shape[-2:]) >= 128 else 1
    if truth is not None and len(truth["boxes"]):
        boxes = truth["boxes"].cpu() * scale
        canvas = draw_bounding_boxes(canvas, boxes, colors=TRUTH, width=width)
    keep = prediction["scores"] >= min_score
    boxes = prediction["boxes"][keep].cpu() * scale
    if len(boxes):
        names = [
            f"{class_names[int(label) - 1]} {float(score):.2f}"
            for label, score in zip(
                prediction["labels"][keep], prediction["scores"][keep], strict=True
            )
        ]
        canvas = draw_bounding_boxes(
            canvas,
            boxes,
            names,
            colors=PREDICTED,
            width=width,
            font=str(font_file()),
            font_size=label_size(canvas),
            label_colors="white",
            fill_labels=True,  # readable on any background, shapes of the box's colour too
        )
    return canvas


def font_file() -> Path:
    """A TrueType font that ships with matplotlib (PIL's built-in one cannot grow)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def label_size(canvas: Tensor) -> int:
    """Label text height in pixels: a twentieth of the image's shorter side, 10 to 24."""
    return max(10, min(24, round(min(canvas.shape[-2:]) / 20)))


def legend(width: int, min_score: float = SHOW_SCORE) -> Tensor:
    """A white strip `width` pixels wide (uint8, 3×h×w) that names the colours of `draw`."""
    from PIL import Image, ImageDraw, ImageFont

    size = 14
    font = ImageFont.truetype(str(font_file()), size)
    strip = Image.new("RGB", (width, 2 * size), "white")
    pen = ImageDraw.Draw(strip)
    x = 6
    for colour, text in ((TRUTH, "truth"), (PREDICTED, f"prediction, score ≥ {min_score:.2f}")):
        pen.rectangle((x, size // 2, x + 20, size + size // 2), outline=colour, width=2)
        pen.text((x + 26, size), text, fill="black", font=font, anchor="lm")
        x += 26 + int(pen.textlength(text, font=font)) + 18
    return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)


def precision_per_class(scores: dict[str, Any], class_names: list[str]) -> dict[str, list[float]]:
    """Each class's precision at COCO's 101 recall thresholds (0, 0.01, ... 1), at IoU 0.5, all
    object sizes and 100 detections per image; classes the test set lacks are left out."""
    if "precision" not in scores:  # nothing detected, or no test images
        return {}
    precision = scores["precision"][0, :, :, 0, -1]  # (recall thresholds, classes)
    classes = scores["classes"].reshape(-1).tolist()
    return {
        class_names[int(label) - 1]: precision[:, k].tolist()
        for k, label in enumerate(classes)
        if (precision[:, k] >= 0).any()  # pycocotools gives -1 where a class has no truth
    }


class DetectionTask(LeanModule):
    """Trains a torchvision detector on (images, targets) batches.

    The four losses and their sum are accumulated as tensors and logged once per epoch (no
    per-step host sync, as SupervisedTask does). Validation and test score COCO-style mAP with
    torchmetrics (pycocotools underneath); the test also reports AP per class.
    """

    monitor = ("val/map_50", "max")

    def __init__(
        self,
        model: FasterRCNN,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: Schedule,
        class_names: list[str],
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.class_names = list(class_names)
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
        # extended_summary: precision per recall threshold, for plots/precision_recall.png
        self.test_map = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", class_metrics=True, extended_summary=True
        )
        self.test_pr: dict[str, list[float]] = {}  # class name -> precision at recall 0..1
        self._sums = torch.zeros(len(LOSSES) + 1)  # each loss × images, then images
        self._shown: tuple[Tensor | list[Tensor], list[Target], list[Target]] | None = None

    def forward(self, images: Tensor | list[Tensor]) -> list[Target]:
        return self.model(images)

    def on_train_epoch_start(self) -> None:
        self._sums = torch.zeros(len(LOSSES) + 1, device=self.device)
        self._note_epoch_lr()
        self._start_step_losses()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, for_training(targets))
        loss = sum(losses[name] for name in LOSSES)
        with torch.no_grad():
            n = torch.tensor(float(len(targets)), device=self.device)
            parts = torch.stack([losses[name].detach() for name in LOSSES])
            self._sums += torch.cat([parts * n, n[None]])
        if self._step_every:  # Lightning steps the optimizer after this: its step is one more
            self._keep_step_losses([loss.detach()], self.trainer.global_step + 1)
        return loss

    def on_train_epoch_end(self) -> None:
        *parts, n = self._over_all_processes(self._sums)
        means = {f"train/{name}": part / n for name, part in zip(LOSSES, parts, strict=True)}
        total = sum(means.values())
        self.log_dict({**means, "train/loss": total, "train/lr": self._epoch_lr})
        self._write_step_losses()
        self._stop_if_diverged(total)

    def metric_names(self) -> list[str]:
        """The metrics a run of this task records (metrics.json): what sweep.metric may name."""
        trained = [f"train/{name}" for name in (*LOSSES, "loss", "lr")]
        tested = [*TESTED, *(f"ap_{name}" for name in self.class_names)]
        validated = [f"val/{key}" for key in VALIDATED]
        return [*trained, *validated, *(f"test/{key}" for key in tested)]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        predictions = self.model(images)
        self.val_map.update(predictions, metric_targets(targets))
        if batch_idx == 0:
            self._shown = (images[:SHOWN], predictions[:SHOWN], targets[:SHOWN])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_map.compute()
        self.val_map.reset()
        self.log_dict({f"val/{key}": scores[key] for key in VALIDATED}, sync_dist=True)
        self._log_drawings()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        self.test_map.update(self.model(images), metric_targets(targets))

    def on_test_epoch_end(self) -> None:
        scores = self.test_map.compute()
        self.test_map.reset()
        metrics = {f"test/{key}": scores[key] for key in TESTED}
        # AP per class, for the classes the test set has (pycocotools gives −1 to the others).
        classes = scores["classes"].reshape(-1).tolist()
        per_class = scores["map_per_class"].reshape(-1)
        for label, ap in zip(classes, per_class, strict=True):
            if ap >= 0:
                metrics[f"test/ap_{self.class_names[int(label) - 1]}"] = ap
        self.log_dict(metrics, sync_dist=True)
        self.test_pr = precision_per_class(scores, self.class_names)

    def _log_drawings(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self._shown is None or not hasattr(experiment, "add_image"):
            return
        images, predictions, targets = self._shown
        self._shown = None
        # small images (the shapes' 128 pixels) are drawn larger, so their labels fit
        scale = max(1, -(-DRAWN_SIDE // min(images[0].shape[-2:])))
        drawn = [
            draw(image, pred, self.class_names, truth, scale=scale)
            for image, pred, truth in zip(images, predictions, targets, strict=True)
        ]
        if len({d.shape for d in drawn}) > 1:  # COCO images differ in size: show them one by one
            drawn = drawn[:1]
        grid = make_grid(drawn, nrow=4, padding=2, pad_value=255)
        grid = torch.cat([legend(grid.shape[-1]), grid], dim=1)
        experiment.add_image("val/detections", grid, global_step=self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # `nnlab predict` rebuilds the model from the run's config and these names, without
        # needing the dataset.
        checkpoint[CHECKPOINT_KEY] = {"class_names": self.class_names}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return configure(self, params, self.optimizer_factory, self.schedule)
