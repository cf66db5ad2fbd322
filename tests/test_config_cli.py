"""`nnlab config`, `nnlab --help`, and configs packaged so a non-editable install works."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import yaml


def test_config_prints_resolved_config(nnlab):
    result = nnlab("config", "model=cnn", "norm=group", "optimizer.lr=0.02")
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.output)
    assert cfg["model"]["_target_"] == "nnlab.models.cnn.build_cnn"
    assert cfg["model"]["norm"] == "group", "norm group feeds the model"
    assert cfg["optimizer"]["lr"] == 0.02


def test_config_list_shows_every_group_and_choice(nnlab):
    result = nnlab("config", "--list")
    assert result.exit_code == 0
    text = result.output
    for group in ("model", "data", "optimizer", "norm", "activation", "scheduler", "trainer"):
        assert group in text
    for choice in ("mlp", "cnn", "momentum", "rmsprop", "instance", "gelu", "onecycle", "mnist"):
        assert choice in text


def test_help_lists_commands_with_examples_and_imports_no_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from nnlab.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); print(r.output);"
        "print('HEAVY' if {'torch', 'pytorch_lightning'} & set(sys.modules) else 'LIGHT')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    for command in ("train", "eval", "config"):
        assert command in out
    assert "nnlab train model=cnn" in out
    assert out.strip().endswith("LIGHT"), "`nnlab --help` must not import torch or lightning"


def test_wheel_ships_the_configs(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-q",
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("nnlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "nnlab/conf/train.yaml",
        "nnlab/conf/model/mlp.yaml",
        "nnlab/conf/data/digits.yaml",
    } <= names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = (
        "from nnlab.config import compose_config; print(compose_config(['model=cnn'])[1]['model'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout.strip() == "cnn", proc.stderr


def test_a_coco_run_saved_with_num_workers_loads_with_it_renamed_workers(tmp_path):
    """COCO's data.num_workers became data.workers (one name for every dataset): a run saved
    before keeps its value, not an 'unknown key' refusal."""
    from omegaconf import OmegaConf

    from nnlab.config import compose_config, saved_run_config

    cfg, choices = compose_config(["data=coco", f"data.root={tmp_path}", "data.workers=3"])
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved.pop("hydra", None)
    saved["data"]["num_workers"] = saved["data"].pop("workers")
    loaded, _ = saved_run_config(saved, choices, [], None, "an old run's config.yaml")
    assert loaded.data.workers == 3
    assert "num_workers" not in loaded.data
