"""Bad input: one clear message naming the bad value and the choices, exit 2, no traceback,
and nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import QUICK, assert_clear_error

BAD = [
    (["model=mpl"], ["'mpl'", "faster_rcnn_coco, gan, mlp, rnn", "Did you mean 'mlp'"]),
    (["modle=cnn"], ["'modle'", "Did you mean 'model'"]),
    (["model.hiden=64"], ["'model.hiden'", "Did you mean 'model.hidden'"]),
    (["trainer.max_epochs=abc"], ["trainer.max_epochs", "'abc'"]),
    (["optimizer.lr=-0.1"], ["optimizer.lr", "-0.1", "greater than 0"]),
    (["optimizer=adamm"], ["'adamm'", "Did you mean 'adam'"]),
    (["norm=instance"], ["norm=instance", "model=cnn"]),
    (["loss=mae"], ["'mae'", "cross_entropy, mse"]),
    (["activation=relu6"], ["'relu6'", "leaky_relu"]),
    (["model.dropout=1.5"], ["model.dropout", "less than 1.0"]),
    (["data=mnist", "data.root=missing_dir"], ["missing_dir", "train-images-idx3-ubyte"]),
    (["data=image_folder"], ["data.root must be set"]),
    (["data=iris", "model=cnn"], ["model=cnn needs image data"]),
    (["model=cnn", "model.channels=[8,8,8,8,8]"], ["at most 3 stages"]),
    (["epochs"], ["key=value"]),
    (["trainer.accelerator=tpu"], ["Bad trainer setting", "torch_xla"]),
    (["trainer.accelerator=gpu"], ["trainer.accelerator=gpu", "GPU"]),
    (["+trainer.max_epoch=3"], ["'trainer.max_epoch'", "Did you mean 'trainer.max_epochs'"]),
    (["model=cnn", "model.channels=[]"], ["model.channels", "at least 1"]),
    (["tags=[[1]]"], ["tags[0]", "single values"]),
    (["trainer.steps_per_execution=0"], ["trainer.steps_per_execution", "at least 1"]),
    (["callbacks.checkpoint_interval_s=-1"], ["callbacks.checkpoint_interval_s", "at least 0"]),
    (
        ["trainer.limit_val_batches=0", "callbacks.early_stopping_patience=2"],
        ["val/acc", "trainer.limit_val_batches=0", "callbacks.monitor=train/loss"],
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD, ids=lambda v: " ".join(v)[:40])
def test_bad_override_is_a_clear_error(nnlab, workdir, overrides, expected):
    assert_clear_error(nnlab("train", *QUICK, *overrides), expected)
    runs = workdir / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "bad input must leave no run directory"


def test_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nnlab.cli", "train", "model=mpl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Did you mean 'mlp'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_eval_of_a_missing_run_suggests_existing_ones(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    result = nnlab("eval", "outputs/runs/no_such_run")
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "'outputs/runs/no_such_run' is not a run directory" in message
    assert "mlp_digits" in message, "recent runs are listed"


def test_eval_latest_without_runs(nnlab):
    result = nnlab("eval", "latest")
    assert result.exit_code == 2
    assert "no runs" in result.output


def test_eval_rejects_unknown_override_key(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    result = nnlab("eval", "latest", "data.batchsize=8")
    assert result.exit_code == 2
    assert "Did you mean 'data.batch_size'" in " ".join(result.output.split())


def test_corrupt_checkpoint_is_a_clear_error(nnlab, workdir, tmp_path):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    result = nnlab("eval", str(bad))
    assert result.exit_code == 2
    assert "Cannot read checkpoint" in result.output


def test_checkpoint_that_does_not_fit_the_model_is_a_clear_error(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    result = nnlab("eval", "latest", "model.hidden=32")
    assert result.exit_code == 2
    assert "does not fit the model" in result.output
    assert "Traceback" not in result.output


def test_adam_betas_are_checked_before_training(nnlab, workdir):
    assert_clear_error(nnlab("train", "optimizer.betas=[0.9]"), ["optimizer.betas", "2 numbers"])
    assert_clear_error(nnlab("train", "optimizer.betas=[0.9,1.0]"), ["optimizer.betas[1]"])
    assert not (workdir / "outputs").exists()
