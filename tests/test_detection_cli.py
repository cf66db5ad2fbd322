"""Object detection (issue 6): Faster R-CNN on synthetic shapes and COCO-format data, through
the CLI on tiny images: train, eval, predict, and the errors a user can run into."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nnlab.data.coco import CocoDataModule
from nnlab.data.shapes import CLASSES, ShapesDataModule, generate_shapes
from nnlab.errors import UserError
from nnlab.models.detection import build_faster_rcnn
from tests.helpers import assert_clear_error, metrics_of, only_run

PNG = b"\x89PNG"
# A few steps on 64×64 images with a slim network: seconds, not minutes.
TINY_MODEL = [
    "model=faster_rcnn",
    "model.channels=[8,16,16]",
    "model.box_head_width=32",
    "model.min_size=64",
    "model.max_size=64",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
]
TINY_SHAPES = [
    "data=shapes",
    "data.image_size=64",
    "data.max_object_size=24",
    "data.train_images=16",
    "data.val_images=8",
    "data.test_images=8",
]
LOSSES = ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working directory for the module: the detection run is trained once, then reused."""
    return tmp_path_factory.mktemp("detection")


@pytest.fixture
def in_shared(shared: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(shared)
    return shared


def trained_run(nnlab, shared: Path) -> Path:
    found = list((shared / "outputs" / "runs").glob("*_tiny_shapes"))
    if not found:
        result = nnlab("train", *TINY_MODEL, *TINY_SHAPES, "name=tiny_shapes")
        assert result.exit_code == 0, result.output
        found = list((shared / "outputs" / "runs").glob("*_tiny_shapes"))
    return found[0]


def write_shape_pngs(folder: Path, n: int, seed: int = 7) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images, _, _ = generate_shapes(n, np.random.default_rng(seed), 64, max_object_size=24)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"shape{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def write_coco(root: Path, n: int = 12, size: int = 48) -> dict:
    """A tiny COCO dataset: coloured rectangles, two categories with non-contiguous ids, one
    crowd region (to be skipped), and one image without objects."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(n):
        pixels = np.full((size, size + 8, 3), 30, dtype=np.uint8)  # not square: sizes vary
        if i > 0:
            x, y, w, h = (int(v) for v in rng.integers(2, 20, size=4))
            category = (3, 7)[i % 2]
            pixels[y : y + h, x : x + w] = (220, 40, 40) if category == 3 else (40, 40, 220)
            annotations.append(
                {"id": i, "image_id": 100 + i, "category_id": category, "bbox": [x, y, w, h],
                 "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        Image.fromarray(pixels).save(root / "images" / f"img{i}.jpg")
        images.append(
            {"id": 100 + i, "file_name": f"img{i}.jpg", "width": size + 8, "height": size}
        )
    annotations.append(
        {"id": 999, "image_id": 101, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1}
    )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 7, "name": "blue"}, {"id": 3, "name": "red"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return coco


# -- data ------------------------------------------------------------------------------------
def test_shape_boxes_are_exactly_the_shapes_pixels():
    images, boxes, labels = generate_shapes(
        40, np.random.default_rng(1), 64, min_objects=2, max_objects=4, max_object_size=20
    )
    for image, image_boxes, image_labels in zip(images, boxes, labels, strict=True):
        pixels = image.permute(1, 2, 0).reshape(-1, 3).int()
        background = pixels.median(dim=0).values  # shapes cover well under half the image
        drawn = (image.permute(1, 2, 0).int() - background).abs().sum(dim=2) > 100
        covered = torch.zeros_like(drawn)
        present = image_boxes[image_labels > 0].long()
        assert 1 <= len(present) <= 4 and set(image_labels[image_labels > 0].tolist()) <= {1, 2, 3}
        for x0, y0, x1, y1 in present.tolist():
            inside = drawn[y0:y1, x0:x1]
            # Tight: the shape touches all four edges of its box.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] = True
        assert not (drawn & ~covered).any(), "a shape pixel lies outside every box"


def test_shapes_splits_are_seeded_and_fixed():
    def make(**kwargs) -> ShapesDataModule:
        dm = ShapesDataModule(image_size=32, max_object_size=12, **kwargs)
        dm.setup()
        return dm

    a = make(train_images=10, val_images=4, test_images=4)
    b = make(train_images=20, val_images=4, test_images=4)
    assert torch.equal(a.splits["val"][0], b.splits["val"][0]), "val must not depend on train size"
    assert torch.equal(a.splits["train"][0], b.splits["train"][0][:10])
    assert not torch.equal(a.splits["val"][0], a.splits["test"][0])
    other = make(train_images=10, val_images=4, test_images=4, data_seed=1)
    assert not torch.equal(a.splits["test"][0], other.splits["test"][0])
    images, targets = next(iter(a.val_dataloader()))
    assert images.dtype == torch.float32 and images.shape == (4, 3, 32, 32)
    assert 0 <= images.min() and images.max() <= 1
    assert all(t["boxes"].shape == (len(t["labels"]), 4) for t in targets)
    assert a.class_names == list(CLASSES) and a.num_outputs == 3


def test_coco_loader_reads_classes_boxes_and_carves_splits(tmp_path):
    write_coco(tmp_path)
    dm = CocoDataModule(str(tmp_path), val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    # Labels follow category id order (3 → 1, 7 → 2), whatever order the JSON lists them in.
    assert dm.class_names == ["red", "blue"] and dm.num_outputs == 2
    assert {k: len(v) for k, v in dm.records.items()} == {"train": 6, "val": 3, "test": 3}
    records = {path.name: target for split in dm.records.values() for path, target in split}
    assert len(records) == 12, "every image in exactly one split"
    coco = json.loads((tmp_path / "annotations.json").read_text())
    for ann in coco["annotations"]:
        name = f"img{ann['image_id'] - 100}.jpg"
        if ann["iscrowd"]:
            continue
        x, y, w, h = ann["bbox"]
        target = records[name]
        assert target["boxes"].tolist() == [[x, y, x + w, y + h]]
        assert target["labels"].tolist() == [1 if ann["category_id"] == 3 else 2]
    assert len(records["img1.jpg"]["boxes"]) == 1, "the crowd region is skipped"
    assert records["img0.jpg"]["boxes"].shape == (0, 4)
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and images[0].shape == (3, 48, 56) and len(targets) == 4


def test_coco_loader_uses_separate_validation_annotations(tmp_path):
    coco = write_coco(tmp_path)
    val = {**coco, "images": coco["images"][:3], "annotations": coco["annotations"][:2]}
    (tmp_path / "val.json").write_text(json.dumps(val))
    dm = CocoDataModule(str(tmp_path), val_annotations="val.json", test_fraction=0.25)
    dm.setup()
    assert len(dm.records["val"]) == 3 and len(dm.records["test"]) == 3
    assert len(dm.records["train"]) == 9


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("no root", ["does not exist", "annotations.json", "images/", "data.root="]),
        ("no annotations", ["annotations file", "does not exist", "'categories'"]),
        ("missing image", ["lacks 1 image(s)", "img3.jpg"]),
        ("not coco", ["is not COCO-format JSON"]),
    ],
)
def test_coco_layout_errors_say_what_is_expected_where(nnlab, workdir, layout, expected):
    root = workdir / "dataset"
    if layout != "no root":
        write_coco(root, n=6)
    if layout == "no annotations":
        (root / "annotations.json").unlink()
    elif layout == "missing image":
        (root / "images" / "img3.jpg").unlink()
    elif layout == "not coco":
        (root / "annotations.json").write_text(json.dumps({"images": []}))
    result = nnlab("train", *TINY_MODEL, "data=coco", f"data.root={root}")
    assert_clear_error(result, expected)
    assert not (workdir / "outputs" / "runs").exists(), "no run directory for bad input"


def test_coco_root_is_required(nnlab, workdir):
    assert_clear_error(nnlab("train", *TINY_MODEL, "data=coco"), ["data.root must be set"])


# -- models ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["cnn", "resnet18", "mobilenet_v3_large"])
def test_every_backbone_trains_a_step_and_detects(backbone):
    torch.manual_seed(0)
    model = build_faster_rcnn(
        (3, 64, 64), 3, backbone=backbone, channels=[8, 16], box_head_width=32,
        anchor_sizes=[16, 32], min_size=64, max_size=64, norm="group", norm_groups=4,
    )  # fmt: skip
    images, boxes, labels = generate_shapes(2, np.random.default_rng(0), 64, max_object_size=24)
    from nnlab.data.detection import unpad

    losses = model(images.float() / 255, unpad(boxes, labels))
    assert set(losses) == set(LOSSES) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([images[0].float() / 255])
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["scores"]) == len(out[0]["labels"])


def test_norm_and_activation_groups_reach_the_cnn_backbone():
    model = build_faster_rcnn((3, 64, 64), 3, channels=[8, 16], norm="group", activation="elu")
    kinds = {type(m).__name__ for m in model.backbone.modules()}
    assert {"GroupNorm", "ELU"} <= kinds and "BatchNorm2d" not in kinds
    resnet = build_faster_rcnn((3, 64, 64), 3, backbone="resnet18", norm="layer")
    assert not any(type(m).__name__.endswith("BatchNorm2d") for m in resnet.modules())


def test_backbone_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    donor = build_faster_rcnn((3, 64, 64), 3, backbone="resnet18")
    # A classifier's state dict, as torchvision publishes them: the body plus an fc head.
    state = {**donor.backbone.body.state_dict(), "fc.weight": torch.zeros(10, 512)}
    torch.save(state, tmp_path / "resnet18.pth")
    torch.manual_seed(1)
    loaded = build_faster_rcnn(
        (3, 64, 64), 3, backbone="resnet18", weights=str(tmp_path / "resnet18.pth")
    )
    for name, value in donor.backbone.body.state_dict().items():
        assert torch.equal(value, loaded.backbone.body.state_dict()[name]), name
    with pytest.raises(UserError, match="does not fit"):
        build_faster_rcnn((3, 64, 64), 3, weights=str(tmp_path / "resnet18.pth"))


# -- through the CLI --------------------------------------------------------------------------
def test_train_logs_finite_losses_map_and_drawn_boxes(nnlab, in_shared):
    run = trained_run(nnlab, in_shared)
    metrics = metrics_of(run)
    assert metrics["status"] == "finished"
    for name in [*LOSSES, "loss"]:
        assert math.isfinite(metrics[f"train/{name}"]), name
    assert metrics["train/loss"] == pytest.approx(sum(metrics[f"train/{n}"] for n in LOSSES))
    for key in ("val/map", "val/map_50", "test/map", "test/map_50"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert (run / "checkpoints" / "best.ckpt").exists()
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {f"train/{n}" for n in LOSSES} | {"val/map", "val/map_50"} <= set(
        events.Tags()["scalars"]
    )
    assert len(events.Images("val/detections")) == 1, "one drawing per validation"


def test_eval_reports_map_and_ap_per_class(nnlab, in_shared):
    run = trained_run(nnlab, in_shared)
    result = nnlab("eval", str(run))
    assert result.exit_code == 0, result.output
    assert "test/map_50" in result.output and "test/ap_" in result.output
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["test/map"] == pytest.approx(metrics_of(run)["test/map"])
    assert {k for k in evaluated if k.startswith("test/ap_")} <= {f"test/ap_{c}" for c in CLASSES}


def test_predict_writes_drawn_images_and_detections_json(nnlab, in_shared):
    run = trained_run(nnlab, in_shared)
    paths = write_shape_pngs(in_shared / "to_predict", 2)
    result = nnlab("predict", str(run), str(paths[0].parent), "--min-score", "0")
    assert result.exit_code == 0, result.output
    out = run / "predictions"
    assert (out / "shape0.png").read_bytes().startswith(PNG)
    assert Image.open(out / "shape1.png").size == (64, 64)
    found = json.loads((out / "detections.json").read_text())["images"]
    assert set(found) == {str(p) for p in paths}
    for detections in found.values():
        assert len(detections) > 0, "min score 0 keeps every detection"
        for d in detections:
            assert d["class"] in CLASSES and 0 <= d["score"] <= 1 and len(d["box"]) == 4


def test_predict_input_errors(nnlab, in_shared):
    run = trained_run(nnlab, in_shared)
    assert_clear_error(
        nnlab("predict", str(run), "missing.png"), ["No such image file or folder: missing.png"]
    )
    (in_shared / "empty").mkdir(exist_ok=True)
    assert_clear_error(nnlab("predict", str(run), "empty"), ["holds no images"])
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none"]
    digits = nnlab("train", *quick, "trainer.enable_progress_bar=false")
    assert digits.exit_code == 0, digits.output
    paths = write_shape_pngs(in_shared / "one", 1)
    assert_clear_error(
        nnlab("predict", "latest", str(paths[0])), ["DigitsDataModule) has no such files", "eval"]
    )


def test_train_and_predict_on_a_coco_dataset(nnlab, workdir):
    write_coco(workdir / "coco", n=12)
    result = nnlab(
        "train", *TINY_MODEL, "data=coco", "data.root=coco", "data.batch_size=2",
        "model.anchor_sizes=[8,16]",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = (workdir / "outputs" / "runs").iterdir()
    metrics = metrics_of(run)
    assert math.isfinite(metrics["train/loss"]) and 0 <= metrics["test/map_50"] <= 1
    predicted = nnlab("predict", "latest", "coco/images/img1.jpg", "--min-score", "0")
    assert predicted.exit_code == 0, predicted.output
    (drawn,) = (run / "predictions").glob("*.png")
    assert Image.open(drawn).size == (56, 48)
    found = json.loads((run / "predictions" / "detections.json").read_text())["images"]
    assert {d["class"] for d in found["coco/images/img1.jpg"]} <= {"red", "blue"}
    _coco_results_score_as_eval_does(nnlab, workdir, run)


def _coco_results_score_as_eval_does(nnlab, workdir, run) -> None:
    """coco_results.json carries the annotations' own image and category ids, so pycocotools
    scores the test images' predictions exactly as nnlab eval scores the test split."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from nnlab.data.coco import CocoDataModule

    assert nnlab("eval", str(run)).exit_code == 0
    scored = json.loads((run / "eval.json").read_text())
    carved = CocoDataModule(str(workdir / "coco"), in_memory=False)
    carved.setup()
    tests = [str(path) for path, _ in carved.records["test"]]
    predicted = nnlab("predict", str(run), *tests, "--min-score", "0")
    assert predicted.exit_code == 0, predicted.output
    results = json.loads((run / "predictions" / "coco_results.json").read_text())
    assert {r["category_id"] for r in results} <= {3, 7}, "the annotations' ids, not labels"
    truth = COCO(str(workdir / "coco" / "annotations.json"))
    ids = [100 + int(Path(t).stem.removeprefix("img")) for t in tests]
    assert {r["image_id"] for r in results} <= set(ids)
    evaluation = COCOeval(truth, truth.loadRes(results) if results else COCO(), "bbox")
    evaluation.params.imgIds = ids
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(scored["test/map"], abs=1e-6)
    assert evaluation.stats[1] == pytest.approx(scored["test/map_50"], abs=1e-6)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=faster_rcnn", "data=digits"], ["needs a detection dataset", "data=shapes"]),
        (["model=cnn", *TINY_SHAPES], ["object-detection dataset", "model=faster_rcnn"]),
        (["model=faster_rcnn", "model.backbone=resnet19"], ["'resnet19'", "'resnet18'"]),
        (["model=faster_rcnn", *TINY_SHAPES, "model.weights=no.pth"], ["model.weights=no.pth"]),
        (["model=faster_rcnn", "model.box_head_widht=64"], ["box_head_widht", "box_head_width"]),
        (["model=faster_rcnn", *TINY_SHAPES, "data.max_object_size=99"], ["max_object_size"]),
    ],
)
def test_detection_input_errors(nnlab, workdir, overrides, expected):
    result = nnlab("train", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", *overrides)
    assert_clear_error(result, expected)


@pytest.mark.slow
def test_default_detector_reaches_the_quality_bar_on_shapes(nnlab, workdir):
    result = nnlab("train", "model=faster_rcnn", "data=shapes", "trainer.enable_progress_bar=false")
    assert result.exit_code == 0, result.output
    metrics = metrics_of(only_run(workdir))
    assert metrics["fit_time_s"] <= 600, "at most 10 minutes of CPU training"
    assert metrics["test/map_50"] >= 0.95, metrics
    assert metrics["test/map"] >= 0.70, metrics


def test_coco_results_of_good_detections_score_as_nnlabs_metric(workdir):
    """Non-trivial detections (each image's true boxes, shifted a little, plus a false alarm):
    pycocotools on coco_results.json and nnlab's torchmetrics mAP on the same boxes agree."""
    from omegaconf import OmegaConf
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from torchmetrics.detection import MeanAveragePrecision

    from nnlab.predict import _write_coco_results
    from nnlab.tasks.detection import metric_targets

    write_coco(workdir / "coco", n=12)
    data = CocoDataModule(str(workdir / "coco"), in_memory=False)
    data.setup()
    detected, predictions, targets = {}, [], []
    for k, (path, target) in enumerate(data.records["train"]):
        boxes = torch.cat([target["boxes"] + k % 3, torch.tensor([[30.0, 30, 40, 40]])])
        labels = torch.cat([target["labels"], torch.tensor([1])])
        # distinct scores, as a detector's are: ties are ordered by image id, which differ
        scores = torch.linspace(0.9, 0.5, len(labels)) - 0.01 * k
        predictions.append({"boxes": boxes, "labels": labels, "scores": scores})
        targets.append(target)
        detected[str(path)] = [
            {"label": int(label), "score": float(score), "box": box.tolist()}
            for box, label, score in zip(boxes, labels, scores, strict=True)
        ]
    coco = {"_target_": "nnlab.data.coco.CocoDataModule", "root": "coco"}
    cfg = OmegaConf.create({"data": coco})
    assert _write_coco_results(cfg, detected, workdir / "r.json") == (len(detected), 0)
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    metric.update(predictions, metric_targets(targets))
    ours = metric.compute()
    truth = COCO(str(workdir / "coco" / "annotations.json"))
    evaluation = COCOeval(truth, truth.loadRes(str(workdir / "r.json")), "bbox")
    evaluation.params.imgIds = [100 + int(Path(p).stem[3:]) for p in detected]
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert 0.2 < evaluation.stats[0] < 1.0  # neither trivial nor perfect
    assert evaluation.stats[0] == pytest.approx(float(ours["map"]), abs=1e-6)
    assert evaluation.stats[1] == pytest.approx(float(ours["map_50"]), abs=1e-6)
