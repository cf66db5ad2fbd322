"""Experiment presets (conf/experiment/): one command runs a lesson's runs and compares them."""

from __future__ import annotations

import pytest
import yaml

from nnlab.config import conf_dir
from nnlab.experiments import load, run_overrides
from tests.helpers import QUICK, all_runs, assert_clear_error, metrics_of

TINY = [*QUICK[:1], "trainer.enable_progress_bar=false", "model.hidden=16"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml")))
def test_every_preset_composes_for_each_of_its_runs(name, nnlab):
    experiment = load(name)
    assert experiment.runs and experiment.report
    for label in experiment.runs:
        result = nnlab("config", *run_overrides(experiment, label, []))
        assert result.exit_code == 0, (label, result.output)


def test_experiment_runs_every_variant_and_writes_the_comparison(nnlab, workdir):
    result = nnlab("train", "experiment=vanishing_gradients", *TINY, "model.depth=3", "seed=42")
    assert result.exit_code == 0, result.output
    labels = ["sigmoid", "relu", "sigmoid+batchnorm", "sigmoid+residual"]
    # runs started in the same second sort by name, so find each by its config
    configs = {run: yaml.safe_load((run / "config.yaml").read_text()) for run in all_runs(workdir)}
    by_name = {config["name"]: run for run, config in configs.items()}
    assert sorted(by_name) == sorted(f"vanishing_gradients-{label}" for label in labels)
    runs = [by_name[f"vanishing_gradients-{label}"] for label in labels]
    for run in runs:
        config = configs[run]
        assert config["tags"] == ["vanishing_gradients"] and config["model"]["depth"] == 3
        assert "grad_ratio_first_last" in metrics_of(run)
    assert "experiment vanishing_gradients" in result.output
    assert (
        "trainer.max_epochs" not in result.output.split("run directory")[0]
    )  # shared: not a label
    (table,) = (workdir / "outputs" / "experiments").glob("*_vanishing_gradients.md")
    lines = table.read_text().splitlines()
    assert lines[2] == "| run | grad_ratio_first_last | test/acc |"
    rows = [line for line in lines[4:] if line.startswith("|")]
    assert [row.split("|")[1].strip() for row in rows] == labels
    relu = metrics_of(runs[1])
    assert f"{relu['test/acc']:.4f}" in rows[1]
    listed = nnlab("runs", "--filter", "tags=vanishing_gradients")
    assert listed.exit_code == 0 and "4 of 4 runs" in listed.output, listed.output


def test_multirun_values_multiply_the_experiment_runs(nnlab, workdir):
    result = nnlab(
        "train",
        "-m",
        "experiment=rnn_memory",
        *TINY,
        "data.length=10",
        "data.samples=300",
        "model.hidden=8,12",
    )
    assert result.exit_code == 0, result.output
    assert len(all_runs(workdir)) == 6
    (table,) = (workdir / "outputs" / "experiments").glob("*_rnn_memory.md")
    labels = [line.split("|")[1].strip() for line in table.read_text().splitlines()[4:]]
    assert labels == [
        f"{cell} model.hidden={h}" for cell in ("rnn", "lstm", "gru") for h in (8, 12)
    ]


def test_eval_train_scores_the_training_split_in_eval_mode(nnlab, workdir):
    result = nnlab("train", *QUICK, "eval_train=true", "model.dropout=0.5")
    assert result.exit_code == 0, result.output
    metrics = metrics_of(all_runs(workdir)[0])
    assert metrics["trainset/acc"] > 0.8 and metrics["trainset/loss"] > 0
    # dropout lowers the accuracy measured while training, not the one measured in eval mode
    assert metrics["trainset/acc"] > metrics["train/acc"]


def test_unknown_experiment_is_a_clear_error(nnlab, workdir):
    assert_clear_error(
        nnlab("train", "experiment=vanishing"), ["vanishing", "Did you mean 'vanishing_gradients'"]
    )
    assert not (workdir / "outputs").exists()
