"""Noise made visible (issue 22): runs repeated over seeds grouped as mean ± std and n, and a
test accuracy's 95% interval for its test set's size (Wilson)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from nnlab import noise
from nnlab.experiments import load, report_table, write_markdown
from nnlab.plan import plan_runs
from tests.helpers import all_runs, metrics_of

TINY = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none"]


def wilson_by_roots(successes: int, trials: int, z: float = noise.Z95) -> tuple[float, float]:
    """The Wilson interval from its definition: every p with |p̂ − p| ≤ z·√(p(1 − p)/n), the
    two roots of (1 + z²/n)p² − (2p̂ + z²/n)p + p̂² = 0."""
    p_hat, z2n = successes / trials, z * z / trials
    roots = np.roots([1 + z2n, -(2 * p_hat + z2n), p_hat * p_hat])
    low, high = sorted(float(r.real) for r in roots)
    return low, high


def test_wilson_interval_of_264_right_out_of_270():
    low, high = noise.wilson(264 / 270, 270)
    assert (low, high) == pytest.approx(wilson_by_roots(264, 270), abs=1e-12)
    # what statsmodels' proportion_confint(264, 270, method="wilson") and scipy's binomtest
    # give: centre (p̂ + z²/2n)/(1 + z²/n) = 0.971075, half-width 0.018701
    assert low == pytest.approx(0.952374, abs=1e-6) and high == pytest.approx(0.989776, abs=1e-6)
    assert noise.fmt_compact(264 / 270, (low, high)) == "0.978±0.019"


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (10, 10), (5, 10), (1, 3), (99, 100)])
def test_wilson_matches_its_definition_and_stays_in_0_1(successes, trials):
    low, high = noise.wilson(successes / trials, trials)
    expected = wilson_by_roots(successes, trials)
    assert (low, high) == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= low < successes / trials or successes == 0
    assert high <= 1.0 and high > low, "no zero-width interval at 0 or all correct"


def test_wilson_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(264, 270), (17, 30), (950, 1000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert noise.wilson(k / n, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_spread_is_mean_and_sample_std():
    found = noise.spread([0.9, 0.92, 0.94])
    assert found.mean == pytest.approx(0.92) and found.std == pytest.approx(0.02) and found.n == 3
    assert noise.spread([0.5]).std is None
    assert noise.spread([]) is None
    assert noise.spread([1.0, math.nan]).n == 1, "a diverged run's NaN is left out"
    assert noise.fmt_spread(noise.Spread(0.97037, 0.003704, 3)) == "0.9704 ± 0.0037"
    assert noise.fmt_spread(noise.Spread(0.97037, 0.012, 3)) == "0.970 ± 0.012"
    assert noise.fmt_spread(noise.Spread(8.1e-9, 2e-9, 3)) == "8.10e-09 ± 2.0e-09"


def test_a_grouped_cell_shows_the_spread_and_the_test_sets_interval():
    runs = [{"test/acc": a, "test_samples": 270} for a in (264 / 270, 262 / 270, 266 / 270)]
    cell = noise.cell(runs, "test/acc")
    mean = sum(r["test/acc"] for r in runs) / 3
    low, high = noise.wilson(mean, 270)
    assert cell == f"{noise.fmt_spread(noise.spread(r['test/acc'] for r in runs))} " + (
        f"[{low:.3f}, {high:.3f}]"
    )
    assert "[" not in noise.cell([{"test/acc": 0.9}], "test/acc"), "no size, no interval"
    unequal = [{"test/acc": 0.9, "test_samples": 270}, {"test/acc": 0.9, "test_samples": 100}]
    assert "[" not in noise.cell(unequal, "test/acc")


def test_seed_overrides_are_what_repeats_share_nothing_else():
    assert noise.setting(["seed=1", "optimizer=sgd", "+seed=3", "++seed=4"]) == ("optimizer=sgd",)
    assert not noise.is_seed("seeds=1") and not noise.is_seed("data.seed=1")


def test_presets_repeat_every_run_once_per_seed_unless_the_user_picks_the_seed():
    experiment = load("optimizers")
    assert experiment.seeds == [0, 1, 2]
    plan = plan_runs(["experiment=optimizers"])
    assert len(plan.runs) == len(experiment.runs) * 3
    seeds = {(spec.label, spec.cfg.seed) for spec in plan.runs}
    assert seeds == {(label, s) for label in experiment.runs for s in (0, 1, 2)}
    assert len({spec.setting for spec in plan.runs}) == len(experiment.runs)
    mine = plan_runs(["experiment=optimizers", "seed=7"])
    assert [spec.cfg.seed for spec in mine.runs] == [7] * len(experiment.runs)
    grid = plan_runs(["experiment=optimizers", "seed=7,8"], multirun=True)
    assert sorted(spec.cfg.seed for spec in grid.runs) == [7] * 4 + [8] * 4


def test_the_experiment_table_and_markdown_group_seeds(tmp_path):
    experiment = load("optimizers")
    rows = [
        (label, [{"test/acc": (260 + i + k) / 270, "test_samples": 270} for k in range(3)])
        for i, label in enumerate(experiment.runs)
    ]
    headers, cells, legend = report_table(experiment, rows)
    assert headers[:2] == ["run", "n"] and all(row[1] == "3" for row in cells)
    acc = cells[0][headers.index("test/acc")]
    assert re.fullmatch(r"0\.9667 ± 0\.0037 \[0\.938, 0\.982\]", acc), acc
    assert "standard deviation" in legend and "95% interval" in legend
    text = write_markdown(experiment, rows, str(tmp_path)).read_text()
    assert f"| sgd | 3 | — | — | {acc} | — |" in text


def test_multirun_over_seeds_prints_one_grouped_row(nnlab, workdir):
    result = nnlab("train", "-m", "seed=0,1,2", "model.hidden=16", *TINY)
    assert result.exit_code == 0, result.output
    runs = [metrics_of(run) for run in all_runs(workdir)]
    assert len(runs) == 3 and {m["test_samples"] for m in runs} == {270}
    table = result.output.split("by setting")[1]
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert len(rows) == 1, table
    cells = [cell.strip() for cell in rows[0].strip("│").split("│")]
    assert cells[:2] == ["(all)", "3"]
    accuracies = [m["test/acc"] for m in runs]
    expected = noise.fmt_spread(noise.spread(accuracies))
    assert expected in rows[0] and "±" in expected
    low, high = noise.wilson(sum(accuracies) / 3, 270)
    assert f"[{low:.3f}, {high:.3f}]" in rows[0]
    assert "test/acc 95% CI" in result.output, "each run's own table shows its interval"
