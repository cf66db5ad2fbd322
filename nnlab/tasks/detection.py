"""Detection task: torchvision's Faster R-CNN losses, COCO mAP, boxes drawn for TensorBoard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
SHOWN = 8  # validation images drawn for TensorBoard each epoch
SHOW_SCORE = 0.5  # predictions drawn need at least this score
TRUTH, PREDICTED = (0, 200, 0), (230, 20, 20)
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
) -> Tensor:
    """A uint8 copy of `image` (float in [0, 1]) with the ground truth in green and predictions
    scoring at least `min_score` in red, labelled with class name and score."""
    canvas = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    if truth is not None and len(truth["boxes"]):
        canvas = draw_bounding_boxes(canvas, truth["boxes"].cpu(), colors=TRUTH, width=1)
    keep = prediction["scores"] >= min_score
    boxes = prediction["boxes"][keep].cpu()
    if len(boxes):
        names = [
            f"{class_names[int(label) - 1]} {float(score):.2f}"
            for label, score in zip(
                prediction["labels"][keep], prediction["scores"][keep], strict=True
            )
        ]
        canvas = draw_bounding_boxes(canvas, boxes, names, colors=PREDICTED, width=1)
    return canvas


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
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True)
        self._sums = torch.zeros(len(LOSSES) + 1)  # each loss × images, then images
        self._shown: tuple[Tensor | list[Tensor], list[Target], list[Target]] | None = None

    def forward(self, images: Tensor | list[Tensor]) -> list[Target]:
        return self.model(images)

    def on_train_epoch_start(self) -> None:
        self._sums = torch.zeros(len(LOSSES) + 1, device=self.device)
        self._note_epoch_lr()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, for_training(targets))
        loss = sum(losses[name] for name in LOSSES)
        with torch.no_grad():
            n = torch.tensor(float(len(targets)), device=self.device)
            parts = torch.stack([losses[name].detach() for name in LOSSES])
            self._sums += torch.cat([parts * n, n[None]])
        return loss

    def on_train_epoch_end(self) -> None:
        *parts, n = self._over_all_processes(self._sums)
        means = {f"train/{name}": part / n for name, part in zip(LOSSES, parts, strict=True)}
        total = sum(means.values())
        self.log_dict({**means, "train/loss": total, "train/lr": self._epoch_lr})
        self._stop_if_diverged(total)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        predictions = self.model(images)
        self.val_map.update(predictions, metric_targets(targets))
        if batch_idx == 0:
            self._shown = (images[:SHOWN], predictions[:SHOWN], targets[:SHOWN])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_map.compute()
        self.val_map.reset()
        self.log_dict({"val/map": scores["map"], "val/map_50": scores["map_50"]}, sync_dist=True)
        self._log_drawings()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        self.test_map.update(self.model(images), metric_targets(targets))

    def on_test_epoch_end(self) -> None:
        scores = self.test_map.compute()
        self.test_map.reset()
        metrics = {f"test/{key}": scores[key] for key in ("map", "map_50", "map_75", "mar_100")}
        # AP per class, for the classes the test set has (pycocotools gives −1 to the others).
        classes = scores["classes"].reshape(-1).tolist()
        per_class = scores["map_per_class"].reshape(-1)
        for label, ap in zip(classes, per_class, strict=True):
            if ap >= 0:
                metrics[f"test/ap_{self.class_names[int(label) - 1]}"] = ap
        self.log_dict(metrics, sync_dist=True)

    def _log_drawings(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self._shown is None or not hasattr(experiment, "add_image"):
            return
        images, predictions, targets = self._shown
        self._shown = None
        drawn = [
            draw(image, pred, self.class_names, truth)
            for image, pred, truth in zip(images, predictions, targets, strict=True)
        ]
        if len({d.shape for d in drawn}) > 1:  # COCO images differ in size: show them one by one
            drawn = drawn[:1]
        grid = make_grid(drawn, nrow=4, padding=2, pad_value=255)
        experiment.add_image("val/detections", grid, global_step=self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # `nnlab predict` rebuilds the model from the run's config and these names, without
        # needing the dataset.
        checkpoint[CHECKPOINT_KEY] = {"class_names": self.class_names}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return configure(self, params, self.optimizer_factory, self.schedule)
