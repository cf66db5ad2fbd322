"""Gradient-flow diagnostics: per-layer norms in TensorBoard, vanishing/exploding warnings
(issue 5, second part)."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nnlab.build import build
from nnlab.callbacks.grad_flow import weight_layers
from nnlab.config import compose_config
from tests.helpers import metrics_of, only_run

DEEP = [
    "model.depth=10",
    "model.hidden=32",
    "trainer.max_epochs=4",
    "trainer.enable_progress_bar=false",
]


def test_deep_sigmoid_mlp_warns_of_vanishing_gradients(nnlab, workdir):
    result = nnlab("train", *DEEP, "activation=sigmoid", "norm=none")
    assert result.exit_code == 0, result.output
    message = " ".join(result.output.split())
    assert "Vanishing gradients" in message and "activation=relu" in message
    metrics = metrics_of(only_run(workdir))
    assert metrics["warnings"] == ["vanishing"]
    assert metrics["grad_ratio_first_last"] < 1e-3
    layers = [name for name, _ in metrics["grad_norms"]]
    assert len(layers) == 11, "ten hidden layers and the head"
    # named like the model, input to output: fc1 ... fc10 hidden, fc11 the head
    assert layers == [f"fc{n}.weight" for n in range(1, 12)]

    result = nnlab("eval", "latest")  # prints the per-layer summary, input to output
    assert result.exit_code == 0, result.output
    assert "gradient flow in training" in result.output and "warnings: vanishing" in result.output
    assert result.output.index("fc1.weight") < result.output.index("fc11.weight")


def test_relu_with_batch_norm_keeps_gradients_flowing(nnlab, workdir):
    result = nnlab("train", *DEEP, "activation=relu", "norm=batch")
    assert result.exit_code == 0, result.output
    assert "Vanishing" not in result.output
    metrics = metrics_of(only_run(workdir))
    assert metrics["warnings"] == [] and metrics["grad_ratio_first_last"] > 1e-2


def test_grad_norms_reach_tensorboard_and_can_be_turned_off(nnlab, workdir):
    assert (
        nnlab("train", "trainer.max_epochs=1", "trainer.enable_progress_bar=false").exit_code == 0
    )
    events = EventAccumulator(str(only_run(workdir) / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "grad_norm/fc3.weight" in tags and "update_ratio/fc3.weight" in tags
    # digits: 1,257 training samples / 64 = 20 steps; sampled every 10 steps
    sampled = [event.value for event in events.Scalars("grad_norm/fc3.weight")]
    assert len(sampled) == 2
    norms = dict(metrics_of(only_run(workdir))["grad_norms"])
    assert sum(sampled) / 2 == pytest.approx(norms["fc3.weight"], rel=1e-5)
    assert events.Scalars("update_ratio/fc3.weight")[0].value < sampled[0], "lr·‖g‖/‖w‖"

    off = nnlab(
        "train",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "callbacks.grad_flow=false",
        "name=off",
    )
    assert off.exit_code == 0
    (run,) = (workdir / "outputs" / "runs").glob("*_off")
    assert "grad_norms" not in metrics_of(run)


def test_nan_loss_stops_the_run_with_advice_and_keeps_last_ckpt(nnlab, workdir):
    result = nnlab(
        "train",
        "trainer.max_epochs=5",
        "trainer.enable_progress_bar=false",
        "optimizer=sgd",
        "optimizer.lr=1e12",
        "norm=none",
    )
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert "Exploding gradients" in message and "gradient_clip_val" in message
    assert "training diverged" in message and "epoch 1" in message
    run = only_run(workdir)
    metrics = metrics_of(run)
    assert metrics["status"] == "failed" and metrics["epochs"] == 1
    assert (run / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=cnn"], ["conv1", "conv2", "conv3", "fc1", "fc2"]),
        (["model=rnn", "data=digits_seq", "model.layers=1"], ["lstm1", "lstm1", "fc1"]),
    ],
)
def test_layers_are_named_like_the_model(overrides, expected):
    # the Sequential CNN's own names are positions: 0.0.weight ... 10.weight
    cfg, _ = compose_config(overrides)
    _, task = build(cfg, None)
    names = [name for name, _ in weight_layers(task.model)]
    assert [name.split(".")[0] for name in names] == expected
    assert names[0] in ("conv1.weight", "lstm1.weight_ih_l0")
