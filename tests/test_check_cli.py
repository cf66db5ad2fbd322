"""`nnlab check <topic>` and `nnlab check` alone (issue 25): every topic's hand-written math
against autograd / torch.optim, one table each; RMSprop and AdamW written out by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nnlab.commands import check
from nnlab.scratch import optim
from nnlab.scratch.checking import TOLERANCE, Row

HEAVY = ("torch", "pytorch_lightning", "lightning", "optuna", "hydra")


@pytest.mark.parametrize("topic", list(check.TOPICS))
def test_each_topic_passes_with_its_table(nnlab, workdir, topic):
    result = nnlab("check", topic)
    assert result.exit_code == 0, result.output
    for column in ("case", "parameter", "relative error", "PASS"):
        assert column in result.output
    assert "FAIL" not in result.output
    assert f"nnlab check {topic}" in result.output
    assert "PASS: " in result.output and "(must be < 1e-06)" in result.output


def test_optim_reports_every_rule_per_parameter():
    rows = optim.check_optim()
    rules = {row.case.partition(":")[0] for row in rows}
    assert rules == {"sgd", "momentum", "adam", "rmsprop", "adamw"}
    assert all(row.passed for row in rows), [r for r in rows if not r.passed]
    # every (case, parameter) once: W, V and b in each of the settings
    assert len(rows) == 3 * len(optim.CASES) == len({(r.case, r.param) for r in rows})


def _failing_rules(rows: list[Row]) -> set[str]:
    return {row.case.partition(":")[0] for row in rows if not row.passed}


def test_a_wrong_rmsprop_step_is_caught(nnlab, workdir, monkeypatch):
    def without_root(w, g, state, group):  # v in the denominator where √v belongs
        v, alpha = state["second"], group["alpha"]
        v.mul_(alpha).add_((1 - alpha) * g * g)
        w -= group["lr"] * g / (v + group["eps"])

    monkeypatch.setitem(optim.UPDATES, "rmsprop", without_root)
    assert _failing_rules(optim.check_optim()) == {"rmsprop"}
    result = nnlab("check", "optim")
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "FAIL: 24 of 30 agree" in result.output


def _adamw_decay_after(w, g, state, group):
    """Decay applied after the Adam step: the weights decayed are not torch's."""
    optim.adam(w, g, state, group)
    w -= group["lr"] * group["weight_decay"] * w


@pytest.mark.parametrize("mistake", ["decay after the step", "L2 in the gradient"])
def test_a_wrong_adamw_step_is_caught(nnlab, workdir, monkeypatch, mistake):
    if mistake == "decay after the step":
        monkeypatch.setitem(optim.UPDATES, "adamw", _adamw_decay_after)
    else:  # Adam with L2 weight decay: what AdamW was invented to differ from
        monkeypatch.setattr(optim, "DECOUPLED", set())
        monkeypatch.setitem(optim.UPDATES, "adamw", optim.adam)
    rows = optim.check_optim()
    assert _failing_rules(rows) == {"adamw"}
    assert max(row.error for row in rows) >= TOLERANCE
    result = nnlab("check", "optim")
    assert result.exit_code == 1 and "FAIL" in result.output, result.output


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", ["rmsprop", "adamw"])
def test_new_rules_step_like_torch_in_the_dtype_given(rule, dtype):
    start = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    mine, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    settings = {"lr": 0.01, "weight_decay": 0.05}
    scratch = optim.ScratchOptimizer([mine], rule, **settings)
    torch_rule = {"rmsprop": torch.optim.RMSprop, "adamw": torch.optim.AdamW}[rule]
    reference = torch_rule([theirs], **settings)
    for _ in range(3):
        for opt, w in ((scratch, mine), (reference, theirs)):
            opt.zero_grad()
            (w.sin() * w).sum().backward()
            opt.step()
    assert mine.dtype == dtype
    torch.testing.assert_close(mine, theirs)


def _nothing(seed: int = 0) -> list[Row]:
    return []


def test_a_check_that_compares_nothing_fails(nnlab, workdir, monkeypatch):
    monkeypatch.setitem(check.TOPICS, "optim", f"{__name__}:_nothing")
    result = nnlab("check", "optim")
    assert result.exit_code == 1 and "FAIL: 0 of 0 agree" in result.output, result.output


def test_check_alone_runs_every_topic(nnlab, workdir):
    result = nnlab("check")
    assert result.exit_code == 0, result.output
    summary = result.output.split("nnlab check: every topic")[1]
    for topic in ["backprop", *check.TOPICS]:
        assert f"{topic} " in summary
    assert f"PASS: all {len(check.TOPICS) + 1} topics agree" in result.output


def test_check_alone_fails_when_one_topic_fails_and_still_runs_the_rest(
    nnlab, workdir, monkeypatch
):
    monkeypatch.setattr(check, "TOPICS", {"optim": check.TOPICS["optim"]})
    monkeypatch.setitem(optim.UPDATES, "adamw", _adamw_decay_after)
    result = nnlab("check")
    assert result.exit_code == 1, result.output
    summary = result.output.split("nnlab check: every topic")[1]
    assert "backprop" in summary and "FAIL: optim" in result.output


def test_check_help_loads_no_heavy_library():
    probe = (
        "import json, sys\n"
        "from nnlab.cli import app\n"
        "for args in (['check', '--help'], ['check', 'optim', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    *shown, loaded = result.stdout.strip().splitlines()
    assert "residual" in "\n".join(shown) and "--seed" in "\n".join(shown)
    heavy = [m for m in json.loads(loaded) if m.split(".")[0] in HEAVY]
    assert heavy == [], f"`nnlab check --help` imports {heavy[:5]}"
