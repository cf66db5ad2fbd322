"""model=cnn model.engine=scratch: the CNN trained on hand-written conv, pooling, norm, layers."""

from __future__ import annotations

import pytest
import torch

from nnlab.scratch import backprop, conv, modules
from tests.helpers import (
    QUICK,
    all_runs,
    assert_clear_error,
    assert_same_training,
    eval_matches_training,
    metrics_of,
)

# float64: the engines then agree to every digit; in float32 their rounding differs (and more
# so with several threads, whose sums run in another order), and two epochs can drift ~1e-4
SMALL = ["model=cnn", "model.channels=[8,16]", "model.fc_hidden=32", "model.dropout=0", *QUICK]
SMALL += ["trainer.precision=64-true"]


def _train(nnlab, workdir, engine: str, *overrides: str) -> dict:
    result = nnlab("train", f"model.engine={engine}", *SMALL, *overrides)
    assert result.exit_code == 0, result.output
    return metrics_of(all_runs(workdir)[-1])


@pytest.mark.parametrize(
    "overrides",
    [
        ("norm=batch", "optimizer=adam"),
        ("norm=none", "optimizer=momentum", "optimizer.lr=0.05", "activation=tanh"),
        ("norm=batch", "model.residual=true", "optimizer=sgd", "optimizer.lr=0.1", "loss=mse"),
        ("norm=layer", "optimizer=adam", "activation=gelu"),
        ("norm=group", "norm.groups=4", "model.residual=true", "optimizer=adam"),
        ("norm=instance", "optimizer=adam", "model.kernel_size=4"),  # an even kernel: "same"
    ],
)
def test_scratch_cnn_gives_the_autograd_metrics(nnlab, workdir, overrides):
    autograd = _train(nnlab, workdir, "autograd", *overrides)
    scratch = _train(nnlab, workdir, "scratch", *overrides)
    assert "model.engine=scratch" in (all_runs(workdir)[-1] / "overrides.yaml").read_text()
    assert_same_training(scratch, autograd, rel=1e-9, acc=0.003)
    assert scratch["test/acc"] > 0.3  # it learned: chance is 0.1


_weight_grad, _output_error = conv.weight_grad, backprop.ScratchMLP.output_error


def _wrong_weight_grad(*args):
    return 0.5 * _weight_grad(*args)


def _wrong_output_error(self, z, y):
    return 2 * _output_error(self, z, y)


@pytest.mark.parametrize(
    ("target", "name", "wrong"),
    [
        (conv, "weight_grad", _wrong_weight_grad),  # the convolution's ∂C/∂w
        (backprop.ScratchMLP, "output_error", _wrong_output_error),  # BP1, the cost's
        (backprop, "ACTIVATIONS", None),  # σ' of the activations
    ],
)
def test_scratch_cnn_runs_the_hand_written_derivatives(
    nnlab, workdir, monkeypatch, target, name, wrong
):
    """A wrong derivative in the hand-written code must change the training: proof it runs."""
    autograd = _train(nnlab, workdir, "autograd", "optimizer=sgd", "norm=batch")
    if wrong is None:
        sigma, _ = backprop.ACTIVATIONS["relu"]
        monkeypatch.setitem(backprop.ACTIVATIONS, "relu", (sigma, lambda z: torch.ones_like(z)))
    else:
        monkeypatch.setattr(target, name, wrong)
    scratch = _train(nnlab, workdir, "scratch", "optimizer=sgd", "norm=batch")
    assert scratch["val/loss"] != pytest.approx(autograd["val/loss"], rel=1e-3)


DROP_INS = [
    (torch.nn.Conv2d(3, 4, 3, padding=1), modules.ScratchConv2d(3, 4, 3, padding=1), 2),
    (torch.nn.Conv2d(3, 4, 4, padding="same"), modules.ScratchConv2d(3, 4, 4, padding="same"), 2),
    (torch.nn.Conv1d(3, 4, 5, padding=2), modules.ScratchConv1d(3, 4, 5, padding=2), 1),
    (torch.nn.MaxPool2d(2), modules.ScratchMaxPool2d(2), 2),
    (torch.nn.MaxPool1d(2), modules.ScratchMaxPool1d(2), 1),
    (torch.nn.GroupNorm(3, 3), modules.ScratchGroupNorm(3, 3), 2),
    (torch.nn.GroupNorm(1, 3), modules.ScratchGroupNorm(1, 3), 1),
    (torch.nn.Linear(7, 5), modules.ScratchLinear(7, 5), 1),
    (torch.nn.GELU(), modules.ScratchActivation("gelu"), 2),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's copy for an even kernel
@pytest.mark.parametrize(("reference", "mine", "dims"), DROP_INS, ids=lambda m: type(m).__name__)
def test_drop_ins_match_torch_in_float64(reference, mine, dims):
    """Same state_dict keys, and the same output and gradients as the torch layer."""
    reference, mine = reference.double(), mine.double()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_()  # not torch's ones and zeros: γ and β must matter
    mine.load_state_dict(reference.state_dict())  # strict: the names are torch's
    x = torch.randn(2, 3, *([9, 7] if dims == 2 else [7]), dtype=torch.float64)
    outputs, grads = [], []
    for module in (reference, mine):
        leaf = x.clone().requires_grad_(True)
        out = module(leaf)
        delta = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * delta).sum().backward()  # any ∂C/∂out
        outputs.append(out.detach())
        grads.append([leaf.grad, *(p.grad for p in module.parameters())])
    torch.testing.assert_close(outputs[1], outputs[0])
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected)


def test_scratch_cnn_run_evaluates_to_the_same_accuracy(nnlab, workdir):
    trained = _train(nnlab, workdir, "scratch", "norm=batch")
    run = all_runs(workdir)[-1]
    eval_matches_training(nnlab, run, trained)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model=cnn", "model.engine=scratch"],
            ["model.dropout=0.25", "model.dropout=0", "model.engine=autograd"],
        ),
        (["model=cnn", "model.engine=scrach"], ["scrach", "Did you mean 'scratch'"]),
    ],
)
def test_scratch_cnn_bad_input(nnlab, workdir, overrides, expected):
    assert_clear_error(nnlab("train", *overrides), expected)
    runs = workdir / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir())
