"""What the data learns from its training split is saved with the run and applied by eval."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
from PIL import Image

from tests.datasets_on_disk import write_image_folder
from tests.helpers import QUICK, assert_clear_error, metrics_of, only_run

IMAGES = ["data=image_folder", "data.root=imgs", "data.image_size=8", "model=cnn", "seed=1"]


def _pre_split_folder(root):
    write_image_folder(root / "train", per_class=16)
    write_image_folder(root / "test", per_class=6, seed=1)


def _darken(folder) -> None:
    """Halve every pixel of every image under `folder`: other training statistics."""
    for png in folder.rglob("*.png"):
        pixels = np.asarray(Image.open(png).convert("RGB"))
        Image.fromarray((pixels // 2).astype(np.uint8)).save(png)


def test_run_saves_what_its_data_learned_in_its_directory_and_checkpoints(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    run = only_run(workdir)
    saved = json.loads((run / "preprocessing.json").read_text())
    stats = saved["standardize"]
    assert np.asarray(stats["mean"]).shape == (1, 1, 1, 1)  # one grey channel of the digits
    assert stats["std"][0][0][0][0] > 0
    for ckpt in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(run / "checkpoints" / ckpt, weights_only=True)
        assert checkpoint["nnlab"]["preprocessing"] == saved


def test_eval_scales_by_the_stored_statistics_when_the_training_files_changed(nnlab, workdir):
    """The user keeps their dataset folder and edits it after training: eval must still test
    the model on data scaled as in training (the stored statistics), so it reproduces the run's
    own test metrics exactly. Re-learning the statistics from today's files would not."""
    _pre_split_folder(workdir / "imgs")
    assert nnlab("train", *IMAGES, *QUICK).exit_code == 0
    run = only_run(workdir)
    trained = metrics_of(run)
    _darken(workdir / "imgs" / "train")
    assert nnlab("eval", str(run)).exit_code == 0
    evaluated = json.loads((run / "eval.json").read_text())
    assert abs(evaluated["test/loss"] - trained["test/loss"]) < 1e-5
    assert evaluated["test/acc"] == trained["test/acc"]


def test_a_checkpoint_copied_out_of_its_run_carries_the_statistics(nnlab, workdir):
    _pre_split_folder(workdir / "imgs")
    assert nnlab("train", *IMAGES, *QUICK).exit_code == 0
    run = only_run(workdir)
    trained = metrics_of(run)
    lone = workdir / "elsewhere" / "model.ckpt"
    lone.parent.mkdir()
    shutil.copy(run / trained["checkpoint"], lone)
    _darken(workdir / "imgs" / "train")
    assert nnlab("eval", str(lone)).exit_code == 0
    evaluated = json.loads((lone.parent / "eval.json").read_text())
    assert abs(evaluated["test/loss"] - trained["test/loss"]) < 1e-5


def test_a_saved_preprocessing_that_does_not_fit_is_a_clear_error(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    run = only_run(workdir)
    path = run / "preprocessing.json"
    saved = json.loads(path.read_text())
    saved["standardize"]["mean"] = "not numbers"
    path.write_text(json.dumps(saved))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = nnlab("eval", str(run))
    assert_clear_error(result, ["saved preprocessing", "standardize", "preprocessing.json"])
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


def test_resume_scales_by_the_stored_statistics(nnlab, workdir):
    """--resume rebuilds the data from the run's preprocessing.json: a damaged one is refused
    before anything of the run is touched."""
    assert nnlab("train", *QUICK).exit_code == 0
    run = only_run(workdir)
    path = run / "preprocessing.json"
    saved = json.loads(path.read_text())
    saved["standardize"]["std"] = [[[[1.0, 2.0]]]]  # two channels for one-channel digits
    path.write_text(json.dumps(saved))
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = nnlab("train", "--resume", str(run), "trainer.max_epochs=3")
    assert_clear_error(result, ["saved preprocessing", "does not fit"])
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
