"""Results as files (issue 22): every run's per-epoch metrics.csv and its plots/ PNGs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import QUICK, metrics_of, only_run

QUIET = ["trainer.enable_progress_bar=false", "logger=none"]
FIRST = ["epoch", "step", "time_s", "lr"]


def rows_of(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_pngs(folder: Path, names: set[str]) -> None:
    """Exactly these figures, each a whole PNG of a readable size, and no half-written file."""
    assert {p.name for p in folder.iterdir()} == names
    for name in names:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 200
            image.verify()  # the whole file decodes


def test_a_run_writes_one_row_per_epoch_and_its_plots(nnlab, workdir):
    result = nnlab("train", "trainer.max_epochs=3", *QUIET)
    assert result.exit_code == 0, result.output
    run = only_run(workdir)
    rows = rows_of(run)
    assert list(rows[0]) == [*FIRST, "train/acc", "train/loss", "val/acc", "val/loss"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    steps = [int(r["step"]) for r in rows]
    assert steps[0] > 0 and steps == [steps[0] * e for e in (1, 2, 3)]  # one epoch's steps each
    times = [float(r["time_s"]) for r in rows]
    assert 0 < times[0] < times[1] < times[2]
    assert all(float(r["lr"]) == pytest.approx(1e-3) for r in rows)  # conf/optimizer/adam.yaml
    # the last epoch's training metrics are the ones metrics.json reports
    metrics = metrics_of(run)
    for key in ("train/loss", "train/acc"):
        assert float(rows[-1][key]) == pytest.approx(metrics[key], rel=1e-5)
    assert float(rows[0]["val/loss"]) > float(rows[-1]["val/loss"])  # it learned
    assert_pngs(run / "plots", {"learning_curves.png", "confusion_matrix.png", "grad_norms.png"})


def test_an_epoch_without_validation_leaves_its_val_cells_empty(nnlab, workdir):
    result = nnlab("train", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2", *QUIET)
    assert result.exit_code == 0, result.output
    rows = rows_of(only_run(workdir))
    assert [r["val/acc"] for r in rows][0::2] == ["", ""]  # epochs 1 and 3: no validation
    assert float(rows[1]["val/acc"]) > 0
    assert all(float(r["train/loss"]) > 0 for r in rows)


def test_a_resumed_run_continues_metrics_csv_without_repeating_epochs(nnlab, workdir):
    assert nnlab("train", "trainer.max_epochs=2", *QUIET).exit_code == 0
    run = only_run(workdir)
    before = rows_of(run)
    # An epoch the checkpoint does not hold, as when a run is killed after the row is written
    # and before last.ckpt is: the resume trains epoch 3 again and keeps only the new row.
    with (run / "metrics.csv").open("a", newline="") as handle:
        handle.write("3,999,999.0,0.001,0.5,0.5,0.5,0.5\n")
    result = nnlab("train", "--resume", "latest", "trainer.max_epochs=4")
    assert result.exit_code == 0, result.output
    rows = rows_of(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[:2] == before, "the earlier session's rows are kept as they were"
    assert rows[2]["step"] != "999"
    steps = [int(r["step"]) for r in rows]
    assert steps == [steps[0] * e for e in (1, 2, 3, 4)]
    times = [float(r["time_s"]) for r in rows]
    assert times == sorted(times), "time_s counts on from the earlier session"
    assert (run / "plots" / "learning_curves.png").exists()


def test_a_regression_run_has_learning_curves_and_no_confusion_matrix(nnlab, workdir):
    result = nnlab(
        "train", "data=sine", "data.samples=300", "model=rnn", "model.hidden=16", *QUICK, *QUIET
    )
    assert result.exit_code == 0, result.output
    run = only_run(workdir)
    assert {"train/mae", "val/mae", "val/loss"} <= set(rows_of(run)[0])
    assert_pngs(run / "plots", {"learning_curves.png", "grad_norms.png"})


def test_a_gan_run_draws_its_samples_over_training(nnlab, workdir, monkeypatch):
    # The judge's classifier is not what this test checks: one epoch trains it in seconds.
    monkeypatch.setattr("nnlab.reference.REFERENCE_EPOCHS", 1)
    result = nnlab(
        "train", "model=gan", "trainer.max_epochs=2", "trainer.limit_train_batches=3", *QUIET
    )
    assert result.exit_code == 0, result.output
    run = only_run(workdir)
    rows = rows_of(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train/loss_d", "train/loss_g", "val/sample_score"} <= set(rows[0])
    assert rows[0]["val/sample_score"] == ""  # the GAN is judged every 10th epoch, and at the end
    assert float(rows[1]["val/sample_score"]) >= 0
    assert_pngs(run / "plots", {"learning_curves.png", "samples_over_training.png"})


def test_a_plot_that_fails_is_a_warning_and_the_run_stands(nnlab, workdir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no room for the labels")

    monkeypatch.setattr("nnlab.plots.confusion_matrix", broken)
    result = nnlab("train", "trainer.max_epochs=1", *QUIET)
    assert result.exit_code == 0, result.output
    message = " ".join(result.output.split())
    assert "Could not draw" in message and "confusion_matrix.png" in message
    assert "no room for the labels" in message and "Traceback" not in result.output
    run = only_run(workdir)
    assert metrics_of(run)["status"] == "finished"
    assert_pngs(run / "plots", {"learning_curves.png", "grad_norms.png"})


def test_a_detection_run_draws_precision_recall_per_class(nnlab, workdir):
    from tests.test_detection_cli import TINY_MODEL, TINY_SHAPES

    result = nnlab("train", *TINY_MODEL, *TINY_SHAPES, "logger=none")
    assert result.exit_code == 0, result.output
    run = only_run(workdir)
    assert {"train/loss", "train/loss_classifier", "val/map", "val/map_50"} <= set(rows_of(run)[0])
    assert_pngs(run / "plots", {"learning_curves.png", "precision_recall.png"})


def test_precision_per_class_reads_torchmetrics_extended_summary():
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    from nnlab.tasks.detection import precision_per_class

    metric = MeanAveragePrecision(class_metrics=True, extended_summary=True)
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    found = {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    wrong = {"boxes": box + 50, "scores": torch.tensor([0.8]), "labels": torch.tensor([2])}
    metric.update([found, wrong], [{"boxes": box, "labels": torch.tensor([1])}] * 2)
    curves = precision_per_class(metric.compute(), ["circle", "square"])
    # class 1: one of its two boxes found first, so precision 1 up to recall 0.5, then none;
    # class 2 has no box in the truth, so no curve
    assert set(curves) == {"circle"}
    assert curves["circle"][:51] == pytest.approx([1.0] * 51)
    assert curves["circle"][51:] == [0.0] * 50
