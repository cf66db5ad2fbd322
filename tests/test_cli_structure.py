"""The CLI's shape (issue 20): a start-up that imports no heavy library, sweep settings that are
checked rather than ignored, and checks sized by the data they are given."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nnlab.commands.sweep import PRESET_KEYS, SETTINGS, sweep_arguments
from nnlab.errors import UserError
from tests.helpers import assert_clear_error

HEAVY = ("torch", "pytorch_lightning", "lightning", "optuna", "hydra")


def test_importing_the_cli_imports_no_heavy_library():
    # a fresh interpreter: this test process has long imported all of them
    probe = "import json, sys, nnlab.cli; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout)
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert heavy == [], f"`import nnlab.cli` imports {heavy[:5]}"
    assert "nnlab.commands.train" in loaded  # the commands are registered all the same


def test_a_misspelt_sweep_setting_is_refused_with_the_closest_one(nnlab, workdir):
    # Before: sweep.trails=5 was dropped without a word and the sweep ran its default 20 trials.
    result = nnlab(
        "sweep",
        "optimizer.lr=interval(0.001,0.01)",
        "sweep.trails=1",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "--trials",
        "1",
    )
    assert_clear_error(
        result,
        [
            "Unknown sweep setting 'sweep.trails'",
            ", ".join(f"sweep.{s}" for s in sorted(SETTINGS)),
            "Did you mean 'sweep.trials'?",
        ],
    )
    assert not (workdir / "outputs").exists(), "refused before anything is written"


def test_sweep_settings_that_are_read_still_apply():
    settings, rest = sweep_arguments(
        ["sweep.metric=val/loss", "norm=none,batch", "sweep.direction=minimize"]
    )
    assert settings == {"metric": "val/loss", "direction": "minimize"}
    assert rest == ["norm=none,batch"]
    settings, rest = sweep_arguments(["sweep=mlp_digits", "sweep.trials=3"])
    assert settings["trials"] == "3" and settings["name"] == "mlp_digits"
    assert "trainer.max_epochs=10" in rest


def test_space_and_fixed_belong_in_a_preset():
    with pytest.raises(UserError, match="sweep.space is a part of a conf/sweep/<name>.yaml"):
        sweep_arguments(["sweep.space=x"])


def test_an_unknown_key_in_a_sweep_preset_is_refused(monkeypatch):
    preset = {"metric": "val/acc", "trails": 5, "space": {"optimizer.lr": "interval(0.1,1)"}}
    monkeypatch.setattr("nnlab.presets.load_preset", lambda group, name: dict(preset))
    with pytest.raises(UserError) as refused:
        sweep_arguments(["sweep=mine"])
    message = str(refused.value)
    assert "conf/sweep/mine.yaml 'trails'" in message and "Did you mean 'trials'?" in message
    assert ", ".join(sorted(PRESET_KEYS)) in message


def test_check_backprop_sizes_the_mlp_by_its_data(nnlab, workdir):
    # Before: 64 inputs and 10 outputs (the digits') whatever data= said.
    result = nnlab(
        "check",
        "backprop",
        "data=iris",
        "model.hidden=8",
        "model.depth=2",
        "activation=sigmoid",
        "loss=cross_entropy",
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "sizes [4, 8, 8, 3]" in output and "PASS" in output


@pytest.mark.parametrize("value", ["abc", "0", "2.5"])
def test_a_sweep_trial_count_that_is_not_a_count_is_refused(nnlab, workdir, value):
    result = nnlab("sweep", "norm=none,batch", f"sweep.trials={value}")
    assert_clear_error(result, ["sweep.trials", value, "whole number"])
    assert not (workdir / "outputs").exists()
