"""Suggestions that lead somewhere (issue 23): an unknown key is looked for in every key and
every group choice of conf/, options such as --epochs get the key=value to type, group choices
ignore case, and every such error is reported before torch, Lightning or Optuna load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nnlab import presets, suggest
from nnlab.config import check_saved_keys, compose_config
from nnlab.errors import UserError
from nnlab.plan import check_saved_run, plan_runs
from tests.helpers import QUICK, assert_clear_error, only_run

SUGGESTED = [
    (["lr=0.1"], ["Unknown key 'lr'", "Did you mean 'optimizer.lr'? (optimizer.lr=0.1)"]),
    (["max_epochs=3"], ["Did you mean 'trainer.max_epochs'? (trainer.max_epochs=3)"]),
    (["epochs=3"], ["Did you mean 'trainer.max_epochs'?"]),
    (["hidden=64"], ["Did you mean 'model.hidden'? (model.hidden=64)"]),
    (["optimizer.lrr=0.1"], ["Did you mean 'optimizer.lr'?"]),
    (["optimiser.lr=0.1"], ["Did you mean 'optimizer.lr'?"]),
    (["model.lr=0.1"], ["Did you mean 'optimizer.lr'?"]),
    (["modle=cnn"], ["Did you mean 'model'? (model=cnn)"]),
    (["kind=relu"], ["activation.kind, logger.kind, norm.kind", "Give the whole key"]),
    (
        ["optimizer.momentum=0.9"],
        [
            "optimizer.momentum is a setting of optimizer=momentum, optimizer=rmsprop",
            "optimizer is adam here",
            "optimizer=momentum optimizer.momentum=0.9",
        ],
    ),
    (["momentum=0.9"], ["optimizer=momentum optimizer.momentum=0.9"]),
    (
        ["optimizer.momentun=0.9"],
        ["Did you mean 'optimizer.momentum'?", "optimizer=momentum optimizer.momentum=0.9"],
    ),
    # trainer=gpu extends trainer=default (its defaults list): its keys are gpu's too
    (["trainer=gpu", "max_epochs=3"], ["Did you mean 'trainer.max_epochs'?"]),
    # the default choice of a group is offered first when it has the key
    (
        ["model=cnn", "model.hidden=64"],
        ["Did you mean 'model.fc_hidden'?", "model=mlp model.hidden=64"],
    ),
    (["--epochs", "5"], ["nnlab takes settings as key=value", "use trainer.max_epochs=5"]),
    (["--lr", "0.01"], ["use optimizer.lr=0.01"]),
    (["--batch-size", "32"], ["use data.batch_size=32"]),
    (["--batch-size=32"], ["use data.batch_size=32"]),
    (["--model", "cnn"], ["use model=cnn"]),
    (["-m", "--epochs", "3", "seed=1,2"], ["use trainer.max_epochs=3"]),
]


@pytest.mark.parametrize(("overrides", "expected"), SUGGESTED, ids=lambda v: " ".join(v)[:40])
def test_an_unknown_key_is_found_where_it_lives(nnlab, workdir, overrides, expected):
    result = nnlab("train", *overrides)
    assert_clear_error(result, expected)
    assert "logger'?" not in result.output, "lr= once suggested logger"
    assert not (workdir / "outputs").exists()


@pytest.mark.parametrize("override", ["optimizer.momentum=0.9", "optimizer.nope=1", "nope=1"])
def test_hydra_keys_are_never_offered_as_settings(nnlab, override):
    result = nnlab("config", override)
    assert_clear_error(result, [override.partition("=")[0]])
    assert "_target_" not in result.output and "_partial_" not in result.output


def test_a_key_found_nowhere_lists_the_keys_there(nnlab):
    assert_clear_error(
        nnlab("config", "optimizer.nope=1"),
        ["Unknown key 'optimizer.nope'", "Keys in optimizer (optimizer=adam): betas, eps, lr"],
    )
    assert_clear_error(nnlab("config", "--nope", "1"), ["not as options like --nope 1"])


def test_keys_of_other_choices_are_read_from_the_conf_files(tmp_path, monkeypatch):
    """A choice added to conf/ is found without any table to update: copy conf/, add
    optimizer=lion with a key no other optimizer has, and ask for that key."""
    conf = tmp_path / "conf"
    shutil.copytree(presets.conf_dir(), conf)
    (conf / "optimizer" / "lion.yaml").write_text(
        "_target_: torch.optim.Adam\n_partial_: true\nlr: 0.0001\nbeta3: 0.5  # a test's own\n"
    )
    cfg, choices = compose_config([])  # the real conf/: what the config offers now
    config = suggest.Config.of(dict_of(cfg), choices)
    caches = (presets.preset_outline, suggest.choice_keys, suggest.offered)
    for cache in caches:
        cache.cache_clear()
    monkeypatch.setattr(presets, "conf_dir", lambda: conf)
    try:
        found = suggest.search("optimizer.beta3", config)
        assert found.other == {"optimizer.beta3": ("lion",)} and not found.live
        message = str(suggest.unknown_key("beta3", "0.7", config))
        assert "optimizer=lion optimizer.beta3=0.7" in message
    finally:
        for cache in caches:
            cache.cache_clear()


def dict_of(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)


def test_every_key_of_every_choice_leads_to_a_choice_that_has_it():
    cfg, choices = compose_config([])
    config = suggest.Config.of(dict_of(cfg), choices)
    missing = {k: c for k, c in suggest.offered().items() if k not in config.live}
    assert "optimizer.momentum" in missing and "model.fc_hidden" in missing
    for key, having in missing.items():
        message = str(suggest.unknown_key(key, "1", config))
        group = key.partition(".")[0]
        assert f"{group}=" in message and any(f"{group}={c}" in message for c in having), key
        assert "_target_" not in message


def test_group_choices_ignore_case_and_are_saved_under_their_real_names(nnlab, workdir):
    result = nnlab(
        "train",
        *QUICK,
        "model=CNN",
        "optimizer=SGD",
        "logger=none",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "callbacks.grad_flow=false",
    )
    assert result.exit_code == 0, result.output
    run = only_run(workdir)
    assert run.name.endswith("_cnn_digits")
    assert json.loads((run / "metrics.json").read_text())["choices"]["model"] == "cnn"
    saved = yaml.safe_load((run / "overrides.yaml").read_text())["overrides"]
    assert "model=cnn" in saved and "optimizer=sgd" in saved
    assert "model=CNN" not in saved
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["_target_"].endswith("cnn")


def test_case_insensitive_choices_in_plans_grids_and_presets():
    (spec,) = plan_runs(["model=CNN", "trainer=Default", "activation=Leaky-ReLU"]).runs
    assert spec.choices["model"] == "cnn" and spec.choices["activation"] == "leaky_relu"
    assert {"model=cnn", "trainer=default", "activation=leaky_relu"} <= set(spec.overrides)
    grid = plan_runs(["model=CNN,MLP"], multirun=True).runs
    assert [s.choices["model"] for s in grid] == ["cnn", "mlp"]
    assert presets.load_preset("sweep", "MLP_Digits") == presets.load_preset("sweep", "mlp_digits")
    lesson = plan_runs(["experiment=Vanishing_Gradients", "trainer.max_epochs=1"])
    assert lesson.experiment.name == "vanishing_gradients"  # its runs' names and tags
    with pytest.raises(UserError, match="Did you mean 'cnn'"):
        compose_config(["model=CNNN"])


# -- before torch: every command that takes overrides ------------------------------------------
PROBE = """
import json, sys
from typer.testing import CliRunner
from nnlab.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
heavy = [m for m in ("torch", "pytorch_lightning", "lightning", "optuna") if m in sys.modules]
print(json.dumps({"code": result.exit_code, "heavy": heavy, "output": result.output}))
"""


def fake_run(root: Path) -> Path:
    """A run directory with nnlab's own config.yaml and metrics.json, and a checkpoint that is
    no checkpoint: a command that loads it fails, so only an error found first passes."""
    cfg, choices = compose_config([])
    run = root / "outputs" / "runs" / "2026-01-01_00-00-00_mlp_digits"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    (run / "checkpoints" / "best.ckpt").write_bytes(b"not a checkpoint")
    from omegaconf import OmegaConf

    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run / "overrides.yaml").write_text("overrides: []\n")
    (run / "metrics.json").write_text(json.dumps({"status": "finished", "choices": choices}))
    return run


TYPOS = [
    ["train", "modle=cnn"],
    ["train", "--epochs", "5"],
    ["train", "-m", "modle=cnn,mlp"],
    ["train", "--resume", "latest", "modle=cnn"],
    ["config", "modle=cnn"],
    ["check", "backprop", "modle=cnn"],
    ["sweep", "optimizer.lr=interval(1e-4,1e-1)", "modle=cnn"],
    ["eval", "latest", "modle=cnn"],
]


@pytest.mark.parametrize("arguments", TYPOS, ids=" ".join)
def test_a_typo_is_reported_before_torch_loads(tmp_path, arguments):
    fake_run(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["code"] == 2, report["output"]
    message = " ".join(report["output"].split())
    assert "Did you mean 'model'?" in message or "use trainer.max_epochs=5" in message, message
    assert report["heavy"] == [], f"loaded {report['heavy']} before reporting the typo"


def test_a_saved_runs_overrides_are_checked_before_its_checkpoint_is_read(tmp_path):
    run = fake_run(tmp_path)
    with pytest.raises(UserError, match=r"Did you mean 'data\.batch_size'\? \(data\.batch_size=8"):
        check_saved_run(str(run), ["data.batchsize=8"], str(tmp_path / "outputs"))
    with pytest.raises(UserError, match="trainer.max_epochs"):
        check_saved_run(str(run), ["trainer.max_epochs=0"], str(tmp_path / "outputs"))
    check_saved_run(str(run), ["data.batch_size=8"], str(tmp_path / "outputs"))


def test_resume_takes_keys_an_older_run_lacks_but_not_typos(tmp_path):
    saved = yaml.safe_load((fake_run(tmp_path) / "config.yaml").read_text())
    choices = {"model": "mlp", "trainer": "default", "optimizer": "adam"}
    del saved["trainer"]["max_time"]  # written before nnlab had it: today's default fills it
    check_saved_keys(saved, choices, ["trainer.max_time=00:00:01:00", "model=cnn"])
    with pytest.raises(UserError, match="Unknown key 'trainer.max_tme' for this run's config"):
        check_saved_keys(saved, choices, ["trainer.max_tme=00:00:01:00"])
    with pytest.raises(UserError, match="use trainer.max_epochs=9"):
        check_saved_keys(saved, choices, ["--max-epochs", "9"])
