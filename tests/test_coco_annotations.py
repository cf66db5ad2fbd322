"""COCO annotations as COCO's evaluation reads them (issue 21): crowd regions kept from the
detector but scored as crowds, zero-size boxes reported, annotations on unknown images refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from nnlab.data.coco import read_coco
from nnlab.data.detection import Target
from nnlab.errors import Notice, UserError
from nnlab.tasks.detection import DetectionTask
from nnlab.tasks.optim import constant_lr
from tests.datasets_on_disk import write_coco_json
from tests.helpers import assert_clear_error
from tests.test_detection_cli import TINY_MODEL

IMAGES = [
    {"id": 1, "file_name": "a.png", "width": 64, "height": 64},
    {"id": 2, "file_name": "b.png", "width": 64, "height": 64},
]
REGULAR = {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "iscrowd": 0}
CROWD = {"id": 11, "image_id": 1, "category_id": 1, "bbox": [30, 30, 30, 30], "iscrowd": 1}


def box(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


class Fixed(nn.Module):
    """A stand-in detector: returns the given predictions, remembers the targets it trains on."""

    def __init__(self, predictions: list[Target]) -> None:
        super().__init__()
        self.predictions = predictions
        self.trained_on: list[Target] = []
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images: list[Tensor], targets: list[Target] | None = None) -> object:
        if targets is None:
            return self.predictions
        self.trained_on = targets
        names = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
        return {name: self.weight * 0 for name in names}


def task_with(predictions: list[Target]) -> DetectionTask:
    return DetectionTask(Fixed(predictions), torch.optim.SGD, constant_lr, ["thing"])


def test_a_detection_on_a_crowd_region_is_no_false_positive(tmp_path):
    write_coco_json(tmp_path, IMAGES[:1], [REGULAR, CROWD])
    records, _, _ = read_coco(tmp_path / "annotations.json", tmp_path / "images")
    ((path, target),) = records
    assert target["boxes"].tolist() == [box(REGULAR["bbox"])], "the crowd is no training box"
    # The detection on the crowd scores highest: counted as a false positive, it halves AP@50.
    predictions = [
        {
            "boxes": torch.tensor([box(CROWD["bbox"]), box(REGULAR["bbox"])]),
            "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([1, 1]),
        }
    ]
    task = task_with(predictions)
    image = torch.zeros(3, 64, 64)
    task.validation_step(([image], [target]), 0)
    assert float(task.val_map.compute()["map_50"]) == 1.0
    task.test_step(([image], [target]), 0)
    assert float(task.test_map.compute()["map_50"]) == 1.0


def test_the_detector_never_trains_on_crowd_regions(tmp_path):
    write_coco_json(tmp_path, IMAGES[:1], [REGULAR, CROWD])
    records, _, _ = read_coco(tmp_path / "annotations.json", tmp_path / "images")
    task = task_with([])
    task.training_step(([torch.zeros(3, 64, 64)], [records[0][1]]), 0)
    (seen,) = task.model.trained_on
    assert set(seen) == {"boxes", "labels"}
    assert seen["boxes"].tolist() == [box(REGULAR["bbox"])]


def test_zero_size_boxes_are_reported_and_left_out(tmp_path):
    flat = {"id": 12, "image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 9], "iscrowd": 0}
    thin = {"id": 13, "image_id": 2, "category_id": 1, "bbox": [5, 5, 9, -1], "iscrowd": 0}
    annotations = write_coco_json(tmp_path, IMAGES, [REGULAR, flat, thin])
    with pytest.warns(Notice) as notices:
        records, _, _ = read_coco(annotations, tmp_path / "images")
    assert [len(target["boxes"]) for _, target in records] == [1, 0]
    message = " ".join(str(notices[0].message).split())
    assert "skipped 2 annotation(s) with a zero-size box" in message
    assert str(annotations) in message and "12, 13" in message


def test_notices_reach_the_user_as_one_plain_line(monkeypatch, capsys):
    from nnlab import console

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # undone after the test
    console.show_warnings_plainly()
    warnings.showwarning(Notice("skipped 2 annotation(s)"), Notice, "coco.py", 1)
    err = capsys.readouterr().err
    assert "Warning: skipped 2 annotation(s)" in err and "coco.py" not in err


def test_no_notice_when_every_box_has_an_area(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", Notice)
        read_coco(write_coco_json(tmp_path, IMAGES, [REGULAR, CROWD]), tmp_path / "images")


def test_an_annotation_on_an_unknown_image_is_a_clear_error(nnlab, workdir):
    stray = {"id": 42, "image_id": 999, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
    annotations = write_coco_json(workdir / "coco", IMAGES, [REGULAR, stray])
    result = nnlab("train", *TINY_MODEL, "data=coco", f"data.root={workdir / 'coco'}")
    assert_clear_error(result, ["annotation 42", "image id 999", str(annotations)])
    assert not (workdir / "outputs" / "runs").exists(), "no run directory for bad input"


@pytest.mark.parametrize(
    "broken",
    [
        {"id": 7, "image_id": 1, "category_id": 1},  # no bbox
        {"id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]},  # no image_id
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5]},  # three numbers
        {"id": 7, "image_id": 1, "category_id": "cat", "bbox": [1, 1, 5, 5]},
    ],
)
def test_an_annotation_missing_its_fields_is_a_clear_error(tmp_path, broken):
    annotations = write_coco_json(tmp_path, IMAGES, [REGULAR, broken])
    with pytest.raises(UserError, match="annotation 7 without a usable image_id"):
        read_coco(annotations, tmp_path / "images")
