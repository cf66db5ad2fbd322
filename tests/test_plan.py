"""nnlab/plan.py: `nnlab train`'s arguments expanded into run specs, without training anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nnlab import experiments
from nnlab.errors import UserError
from nnlab.plan import plan_runs, take_resume


def test_plain_overrides_make_one_composed_run():
    plan = plan_runs(["model.hidden=16", "optimizer=sgd"])
    (spec,) = plan.runs
    assert spec.overrides == spec.given == ["model.hidden=16", "optimizer=sgd"]
    assert spec.cfg.model.hidden == 16 and spec.choices["optimizer"] == "sgd"
    assert spec.label == "" and spec.resume_dir is None
    assert plan.experiment is None and not plan.multirun and not plan.many


def test_multirun_makes_one_run_per_combination_in_order():
    plan = plan_runs(["optimizer=sgd,adam", "norm=none,batch", "model.hidden=8"], multirun=True)
    combos = [(s.choices["optimizer"], s.choices["norm"]) for s in plan.runs]
    assert combos == [("sgd", "none"), ("sgd", "batch"), ("adam", "none"), ("adam", "batch")]
    assert plan.runs[1].overrides == ["optimizer=sgd", "norm=batch", "model.hidden=8"]
    assert all(s.cfg.model.hidden == 8 for s in plan.runs)
    assert plan.multirun and plan.many


def test_without_multirun_a_comma_list_is_not_expanded():
    # Hydra reads `a,b` as a sweep only with -m; without it, composing refuses it
    with pytest.raises(UserError):
        plan_runs(["optimizer=sgd,adam"])


def test_experiment_makes_one_run_per_label_and_seed():
    plan = plan_runs(["experiment=vanishing_gradients", "trainer.max_epochs=1"])
    preset = experiments.load("vanishing_gradients")
    assert len(preset.seeds) > 1
    pairs = [(s.label, s.cfg.seed) for s in plan.runs]
    assert sorted(pairs) == sorted((label, seed) for label in preset.runs for seed in preset.seeds)


def test_experiment_makes_one_run_per_label_with_the_users_overrides_last():
    given = ["trainer.max_epochs=1", "seed=1"]  # the user's seed replaces the preset's seeds
    plan = plan_runs(["experiment=vanishing_gradients", *given])
    preset = experiments.load("vanishing_gradients")
    assert plan.experiment is not None and plan.experiment.name == "vanishing_gradients"
    assert [s.label for s in plan.runs] == list(preset.runs)
    for spec in plan.runs:
        expected = experiments.run_overrides(preset, spec.label, given)
        assert spec.overrides == expected
        assert spec.given == given
        assert spec.cfg.trainer.max_epochs == 1 and spec.cfg.model.depth == 10
    relu = next(s for s in plan.runs if s.label == "relu")
    assert relu.choices["activation"] == "relu"
    assert plan.many and not plan.multirun


def test_experiment_times_multirun():
    args = ["experiment=vanishing_gradients", "optimizer=sgd,adam", "seed=1"]
    plan = plan_runs(args, multirun=True)
    preset = experiments.load("vanishing_gradients")
    assert [(s.label, s.choices["optimizer"]) for s in plan.runs] == [
        (label, optimizer) for label in preset.runs for optimizer in ("sgd", "adam")
    ]
    assert [s.given for s in plan.runs[:2]] == [
        ["optimizer=sgd", "seed=1"],
        ["optimizer=adam", "seed=1"],
    ]


def test_from_sweep_puts_the_best_overrides_first(workdir: Path):
    best = workdir / "outputs" / "sweeps" / "pick" / "best.yaml"
    best.parent.mkdir(parents=True)
    best.write_text(yaml.safe_dump({"overrides": ["optimizer=sgd", "optimizer.lr=0.05"]}))
    (spec,) = plan_runs(["optimizer.lr=0.01"], from_sweep="pick").runs
    assert spec.overrides == ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.lr=0.01"]
    assert spec.choices["optimizer"] == "sgd" and spec.cfg.optimizer.lr == 0.01  # user's wins


def test_from_an_unknown_sweep_is_refused(workdir: Path):
    with pytest.raises(UserError, match="No finished sweep 'nope'"):
        plan_runs([], from_sweep="nope")


def test_every_combination_composes_before_any_run():
    with pytest.raises(UserError, match="nope"):
        plan_runs(["optimizer=sgd,nope"], multirun=True)


@pytest.mark.parametrize(
    "extra",
    [
        {"multirun": True},
        {"from_sweep": "pick"},
        {"arguments": ["experiment=vanishing_gradients"]},
    ],
    ids=["multirun", "from-sweep", "experiment"],
)
def test_resume_continues_one_run_only(extra: dict):
    arguments = extra.pop("arguments", [])
    with pytest.raises(UserError, match="--resume continues one run"):
        plan_runs(arguments, resume="latest", **extra)
    with pytest.raises(UserError, match="--resume continues one run"):
        plan_runs([*arguments, "resume=latest"], **extra)


def test_resume_given_twice_is_refused():
    with pytest.raises(UserError, match="Give one run to resume; got a, b"):
        take_resume("a", ["resume=b"])
    assert take_resume(None, ["resume=x", "seed=1"]) == ("x", ["seed=1"])
    assert take_resume(None, ["seed=1"]) == (None, ["seed=1"])


def test_resume_plans_the_saved_run_with_the_new_overrides(monkeypatch):
    calls = []

    def run_to_resume(target, overrides, output_dir):
        calls.append((target, overrides, output_dir))
        cfg = {"output_dir": output_dir}
        return Path("runs/r1"), cfg, {"model": "mlp"}, ["model.hidden=8", *overrides]

    monkeypatch.setattr("nnlab.restore.run_to_resume", run_to_resume)
    # its keys are checked against the run's files first (test_suggestions does it for real)
    monkeypatch.setattr("nnlab.plan.check_resume_keys", lambda *args: None)
    given = ["trainer.max_epochs=9", "output_dir=a", "output_dir=b"]
    plan = plan_runs(["resume=latest", *given])
    assert calls == [("latest", given, "b")]  # the last output_dir= wins
    (spec,) = plan.runs
    assert spec.resume_dir == Path("runs/r1") and spec.choices == {"model": "mlp"}
    assert spec.overrides == ["model.hidden=8", *given] and spec.given == given
    assert not plan.many
    plan_runs([], resume="latest")
    assert calls[-1] == ("latest", [], "outputs")
