"""Quality bars (slow tier, `pytest -m slow`): full default runs must reach their accuracy."""

from __future__ import annotations

import pytest

from tests.helpers import metrics_of, only_run


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "target"), [([], 0.97), (["model=cnn"], 0.985)])
def test_default_runs_reach_target_accuracy(nnlab, workdir, overrides, target):
    result = nnlab("train", *overrides, "trainer.enable_progress_bar=false")
    assert result.exit_code == 0, result.output
    assert metrics_of(only_run(workdir))["test/acc"] >= target
