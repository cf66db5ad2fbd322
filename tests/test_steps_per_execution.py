"""Several batches per Lightning step (trainer.steps_per_execution): the same training, with
clipping, schedules, limits and the TensorBoard x-axis as Lightning's own loop has them."""

from __future__ import annotations

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nnlab import runs
from tests.helpers import QUICK, all_runs, metrics_of, only_run

COMPARED = ("train/loss", "train/lr", "val/loss", "val/acc", "test/loss", "test/acc")


def last_checkpoint(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["scheduler=onecycle", "optimizer=momentum", "trainer.gradient_clip_val=0.5"],
        ["scheduler=step", "scheduler.step_size=1", "data.batch_size=100"],
    ],
)
def test_batches_per_step_do_not_change_the_training(nnlab, workdir, overrides):
    for per_step in (1, 32, 7):
        args = ["train", *overrides, *QUICK, f"trainer.steps_per_execution={per_step}"]
        assert nnlab(*args).exit_code == 0
    runs = all_runs(workdir)
    # The same weights; the metrics are summed in another order, so equal to float rounding.
    first, *others = (last_checkpoint(r)["state_dict"] for r in runs)
    for other in others:
        assert other.keys() == first.keys()
        assert all(torch.equal(other[k], first[k]) for k in first)
    first, *others = (metrics_of(r) for r in runs)
    for other in others:
        assert {k: other[k] for k in COMPARED} == pytest.approx(
            {k: first[k] for k in COMPARED}, rel=1e-6
        )
    steps = {last_checkpoint(r)["global_step"] for r in runs}
    batch = 100 if "data.batch_size=100" in overrides else 64
    assert steps == {2 * math.ceil(1257 / batch)}, "one optimizer step per batch"


def test_limit_train_batches_counts_batches_not_steps(nnlab, workdir):
    assert nnlab("train", *QUICK, "trainer.limit_train_batches=3").exit_code == 0
    assert nnlab("train", *QUICK, "trainer.limit_train_batches=0.25").exit_code == 0
    limited, fraction = all_runs(workdir)
    assert last_checkpoint(limited)["global_step"] == 2 * 3
    assert last_checkpoint(fraction)["global_step"] == 2 * 5  # a quarter of 20 batches


def test_validation_and_test_limits_count_batches(nnlab, workdir):
    # Evaluation takes groups of batches too; its limits still count batches.
    one_batch = ["data.batch_size=50", "trainer.limit_test_batches=1"]
    assert nnlab("train", *QUICK, *one_batch, "trainer.limit_val_batches=0").exit_code == 0
    run = only_run(workdir)
    logged = (run / runs.LOG).read_text() if (run / runs.LOG).exists() else ""
    assert "monitored key" not in logged, "no best.ckpt to seek"
    metrics = metrics_of(run)
    assert not any(k.startswith("val/") for k in metrics), "limit_val_batches=0: no validation"
    assert metrics["status"] == "finished" and metrics["checkpoint"] == "checkpoints/last.ckpt"
    correct = metrics["test/acc"] * 50
    assert correct == pytest.approx(round(correct), abs=1e-4), "scored on one batch of 50"


@pytest.mark.parametrize(("per_step", "rate_shown"), [(32, False), (1, True)])
def test_the_bar_shows_a_rate_only_when_a_step_is_one_batch(nnlab, workdir, per_step, rate_shown):
    args = ["trainer.max_epochs=2", "logger=none", f"trainer.steps_per_execution={per_step}"]
    result = nnlab("train", *args)
    assert result.exit_code == 0 and "Epoch 2/2" in result.output, "the last frame is drawn"
    assert ("it/s" in result.output) == rate_shown


def test_gradient_clipping_is_applied(nnlab, workdir):
    # Gradients clipped to a norm of 1e-9 leave SGD's weights where they started.
    plain = ["optimizer=sgd", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    assert nnlab("train", *plain).exit_code == 0
    assert nnlab("train", *plain, "trainer.gradient_clip_val=1e-9").exit_code == 0
    free, clipped = (metrics_of(r) for r in all_runs(workdir))
    assert clipped["val/loss"] == pytest.approx(math.log(10), abs=0.1), "no learning at all"
    assert free["val/loss"] < clipped["val/loss"] - 0.2


def test_tensorboard_x_axis_counts_optimizer_steps(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0  # 20 batches per epoch, one Lightning step
    events = EventAccumulator(str(only_run(workdir) / "tb"))
    events.Reload()
    for tag in ("train/loss", "val/acc"):
        assert [e.step for e in events.Scalars(tag)] == [20, 40], tag


def test_epoch_sums_stay_float32_under_mixed_precision():
    # Under bf16-mixed the losses are bf16; a bf16 sum of 600 of them would be off by ~0.1%.
    from nnlab.build import build
    from nnlab.config import compose_config

    _, task = build(compose_config([])[0])
    targets = torch.zeros(200, dtype=torch.long)
    logits = torch.zeros(200, 10)
    logits[:150, 0] = 1.0  # 150 of each 200 right, the rest class 1
    logits[150:, 1] = 1.0
    loss = torch.tensor(0.1234567, dtype=torch.bfloat16)
    task._tally("train", [(logits, targets)] * 3, [loss] * 3, [logits] * 3)
    loss_sum, correct, n = task._sums["train"].tolist()
    assert (correct, n) == (450, 600)
    assert loss_sum == pytest.approx(float(loss) * 600, rel=1e-6)
