"""`nnlab train` end to end: run directory contents, overrides of every group, reproducibility."""

from __future__ import annotations

from datetime import datetime

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nnlab.runs import create_run_dir
from tests.helpers import QUICK, all_runs, assert_clear_error, metrics_of, only_run


def test_default_train_writes_a_complete_run(nnlab, workdir):
    result = nnlab("train", *QUICK)
    assert result.exit_code == 0, result.output
    run = only_run(workdir)
    assert run.name.endswith("_mlp_digits")
    assert f"Run directory: outputs/runs/{run.name}" in result.output.replace("\n", "")
    for key in ("val/acc", "test/acc", "wall_time_s", "params"):
        assert key in result.output

    metrics = metrics_of(run)
    assert metrics["status"] == "finished"
    assert metrics["test/acc"] > 0.8, "two epochs of an MLP on digits should pass 80%"
    assert metrics["epochs"] == 2
    linear = 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    batch_norm = 2 * (256 + 256)  # default norm=batch: a scale and a shift per hidden unit
    assert metrics["params"] == linear + batch_norm
    assert {"torch", "pytorch_lightning", "nnlab", "python"} <= set(metrics["versions"])
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "wall_time_s"):
        assert key in metrics

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["_target_"] == "nnlab.models.mlp.build_mlp"
    assert config["trainer"]["max_epochs"] == 2
    assert "${" not in (run / "config.yaml").read_text(), "config.yaml must be fully resolved"
    assert yaml.safe_load((run / "overrides.yaml").read_text())["overrides"] == QUICK
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_tensorboard_has_curves_confusion_matrix_and_hparams(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    events = EventAccumulator(str(only_run(workdir) / "tb"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "train/lr", "val/loss", "val/acc", "test/acc"} <= scalars
    assert len(events.Scalars("val/acc")) == 2, "one validation point per epoch, no stray ones"
    assert not [t for t in scalars if t.startswith("final/")], "final metrics go to HParams"
    assert "test/confusion_matrix" in events.Tags()["images"]
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    assert b"optimizer.lr" in hparams["_hparams_/session_start_info"]
    assert "optimizer" in (only_run(workdir) / "tb" / "hparams.yaml").read_text()


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=cnn", "optimizer=momentum", "norm=batch", "activation=elu"],
        ["model=cnn", "model.residual=true", "norm=group", "activation=gelu", "scheduler=cosine"],
        ["model=cnn", "norm=instance", "optimizer=rmsprop", "scheduler=step"],
        ["model=cnn", "norm=layer", "activation=leaky_relu", "optimizer=adamw"],
        ["model.residual=true", "norm=layer", "activation=tanh", "scheduler=onecycle"],
        ["optimizer=sgd", "optimizer.weight_decay=1e-3", "activation=sigmoid", "loss=mse"],
        ["optimizer=momentum", "optimizer.nesterov=true", "trainer.gradient_clip_val=0.5"],
        ["data=iris", "model.hidden=32"],
        ["data=wine", "norm=batch"],
        ["data=breast_cancer", "scheduler=cosine"],
    ],
)
def test_every_group_choice_trains(nnlab, workdir, overrides):
    result = nnlab("train", *overrides, "trainer.max_epochs=1", "trainer.enable_progress_bar=false")
    assert result.exit_code == 0, result.output
    metrics = metrics_of(only_run(workdir))
    assert metrics["status"] == "finished"
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["train/loss"] == metrics["train/loss"], "loss must not be NaN"


def test_learning_rate_schedule_is_applied(nnlab, workdir):
    result = nnlab(
        "train", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.1", *QUICK
    )
    assert result.exit_code == 0, result.output
    # Epoch 2 trains at the lr after one decay: 1e-3 · 0.1.
    assert metrics_of(only_run(workdir))["train/lr"] == pytest.approx(1e-4)


def test_same_seed_same_metrics(nnlab, workdir):
    for _ in range(2):
        assert nnlab("train", "seed=7", "model=cnn", *QUICK).exit_code == 0
    first, second = (metrics_of(r) for r in all_runs(workdir))
    for key in ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert first[key] == second[key], key


def test_different_seed_different_run(nnlab, workdir):
    for seed in (1, 2):
        assert nnlab("train", f"seed={seed}", *QUICK).exit_code == 0
    first, second = (metrics_of(r) for r in all_runs(workdir))
    assert first["train/loss"] != second["train/loss"]


def test_runs_started_in_the_same_second_never_collide(tmp_path, monkeypatch):
    frozen = datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr("nnlab.runs.datetime", type("Frozen", (), {"now": lambda: frozen}))
    made = [create_run_dir(tmp_path, "same") for _ in range(3)]
    assert [d.name for d in made] == [
        "2026-01-02_03-04-05_same",
        "2026-01-02_03-04-05_same-1",
        "2026-01-02_03-04-05_same-2",
    ]
    assert all(d.is_dir() for d in made)


def test_run_name_from_config_with_the_progress_bar_on(nnlab, workdir):
    assert nnlab("train", "name=my experiment/1", "trainer.max_epochs=1").exit_code == 0
    assert only_run(workdir).name.endswith("_my_experiment_1")


def test_crash_in_training_exits_1_and_keeps_the_run(nnlab, workdir, monkeypatch):
    def explode(self, batch, batch_idx):
        raise RuntimeError("boom in step")

    monkeypatch.setattr("nnlab.tasks.classification.ClassificationTask.training_step", explode)
    result = nnlab("train", *QUICK)
    assert result.exit_code == 1
    assert "Training failed" in result.output and "boom in step" in result.output
    run = only_run(workdir)
    assert metrics_of(run)["status"] == "failed"
    assert "boom in step" in (run / "error.log").read_text()
    assert (run / "config.yaml").exists(), "what was written before the crash is kept"


def test_max_time_stops_training_early_and_the_run_finishes(nnlab, workdir):
    args = ["trainer.max_time=00:00:00:01", "trainer.max_epochs=100000", "logger=none"]
    result = nnlab("train", *args, "trainer.enable_progress_bar=false")
    assert result.exit_code == 0, result.output
    metrics = metrics_of(only_run(workdir))
    assert metrics["status"] == "finished" and 1 <= metrics["epochs"] < 100000
    bad = nnlab("train", "trainer.max_time=2hours", "trainer.enable_progress_bar=false")
    assert_clear_error(bad, ["2hours", "DD:HH:MM:SS"])


def test_version_is_printed_without_loading_torch():
    import subprocess
    import sys

    import nnlab

    code = (
        "import sys\nfrom nnlab.cli import app\ntry:\n    app(['--version'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.stdout == f"nnlab {nnlab.__version__}\nFalse\n", shown
