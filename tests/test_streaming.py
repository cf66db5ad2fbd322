"""Image folders held in memory or streamed from disk: the same batches and metrics either way,
exact resumes, unreadable files refused by name or skipped and listed (issue 21)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnlab.config import compose_config
from nnlab.data.streaming import STATS_SAMPLE, PixelMoments, stats_sample
from nnlab.data.vision import ImageFolderDataModule
from nnlab.errors import Notice
from nnlab.train import RunInterrupted, train
from tests.datasets_on_disk import write_image_folder
from tests.helpers import all_runs, assert_clear_error, metrics_of, only_run
from tests.test_resume import CtrlC

# 48 images, 34 to train on: nine batches of 4, two per Lightning step (five steps an epoch).
FOLDER = ["data=image_folder", "data.root=imgs", "data.image_size=8", "data.batch_size=4"]
MODEL = ["model=cnn", "model.channels=[4]", "model.fc_hidden=0", "seed=3", "logger=none"]
RUN = [*FOLDER, *MODEL, "trainer.enable_progress_bar=false", "trainer.steps_per_execution=2"]
COMPARED = ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc", "epochs")


def _folder(root: Path, per_class: int = 16) -> Path:
    return write_image_folder(root, per_class=per_class, size=10)


def _truncated_png(path: Path) -> Path:
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-60])  # the header is intact, the pixel data cut short
    return path


def _not_an_image(path: Path) -> Path:
    path.write_text("these are notes, saved with the wrong extension")
    return path


def _metrics(nnlab, workdir: Path, *args: str) -> dict:
    result = nnlab("train", *RUN, *args)
    assert result.exit_code == 0, result.output
    return metrics_of(all_runs(workdir)[-1])


def test_streamed_and_held_folders_give_the_same_batches_every_epoch(tmp_path):
    _folder(tmp_path)

    def module(**kw) -> ImageFolderDataModule:
        dm = ImageFolderDataModule(str(tmp_path), image_size=8, batch_size=4, **kw)
        dm.setup("fit")
        dm.steps_per_execution, dm.limits = 2, {"train": 7}
        return dm

    held, streamed = module(in_memory=True), module(in_memory=False, workers=2)
    assert not held.streamed and streamed.streamed
    assert held.fitted == streamed.fitted, "same classes and statistics"
    for split in ("train", "val", "test"):
        a, b = held._batches(split), streamed._batches(split)
        assert len(a) == len(b) == (4 if split == "train" else 1)
        for _ in range(2):  # two epochs: a new shuffle each
            steps_a, steps_b = list(a), list(b)
            assert [len(s) for s in steps_a] == [len(s) for s in steps_b]
            for step_a, step_b in zip(steps_a, steps_b, strict=True):
                for (xa, ya), (xb, yb) in zip(step_a, step_b, strict=True):
                    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x = torch.cat([x for step in held._batches("train") for x, _ in step])
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8)


def test_a_streamed_run_trains_to_the_same_metrics_as_a_held_one(nnlab, workdir):
    _folder(workdir / "imgs")
    epochs = ["trainer.max_epochs=2"]
    held = _metrics(nnlab, workdir, *epochs, "data.in_memory=true")
    streamed = _metrics(nnlab, workdir, *epochs, "data.in_memory=false", "data.workers=2")
    assert {k: streamed[k] for k in COMPARED} == {k: held[k] for k in COMPARED}
    assert not multiprocessing.active_children(), "the workers stop with the run"
    assert nnlab("eval", str(all_runs(workdir)[-1])).exit_code == 0


def test_a_resumed_streamed_run_ends_exactly_like_an_uninterrupted_one(nnlab, workdir):
    _folder(workdir / "imgs")
    run = [*RUN, "trainer.max_epochs=3", "data.in_memory=false"]
    assert nnlab("train", *run).exit_code == 0
    uninterrupted = metrics_of(only_run(workdir))
    cfg, choices = compose_config(run)
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg, choices, run, callbacks=[CtrlC(epoch=1, batch=2)])
    result = nnlab("train", "--resume", str(stopped.value.run_dir))
    assert result.exit_code == 0, result.output
    resumed = metrics_of(stopped.value.run_dir)
    assert {k: resumed[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_a_file_that_is_no_image_is_refused_by_name(nnlab, workdir, in_memory):
    _folder(workdir / "imgs", per_class=6)
    bad = _not_an_image(workdir / "imgs" / "cat" / "notes.jpg")
    result = nnlab("train", *RUN, "trainer.max_epochs=1", f"data.in_memory={in_memory}")
    assert_clear_error(result, [str(bad), "not a file in a format", "data.skip_bad=true"])
    assert not (workdir / "outputs" / "runs").exists(), "refused before any run directory"


def test_a_cut_short_image_read_in_a_worker_is_refused_by_name(nnlab, workdir):
    # In test/, the streamed run meets it only when it tests, in a DataLoader worker: the user
    # must still see nnlab's message, not the worker's traceback.
    _folder(workdir / "imgs" / "train", per_class=8)
    _folder(workdir / "imgs" / "test", per_class=2)
    bad = _truncated_png(workdir / "imgs" / "test" / "dog" / "cut.png")
    args = ["trainer.max_epochs=1", "data.in_memory=false", "data.workers=2"]
    result = nnlab("train", *RUN, *args)
    assert_clear_error(result, [str(bad), "damaged, cut short", "data.skip_bad=true"])
    assert not multiprocessing.active_children(), "the workers stop with the failed run"


def _with_two_bad_files(root: Path) -> list[Path]:
    _folder(root)
    return [_truncated_png(root / "dog" / "cut.png"), _not_an_image(root / "frog" / "notes.jpg")]


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_skip_bad_trains_without_the_unreadable_files_and_says_so(nnlab, workdir, in_memory):
    bad = _with_two_bad_files(workdir / "imgs")
    args = ["trainer.max_epochs=1", "data.skip_bad=true", f"data.in_memory={in_memory}"]
    result = nnlab("train", *RUN, *args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert all(str(path) in output for path in bad), output
    # Held, every image is read before training: one notice for both. Streamed, the cut-short
    # one is met when first decoded; here in the training split, so by the statistics pass.
    assert "skipped 2 unreadable image(s) (data.skip_bad=true)" in output
    assert metrics_of(only_run(workdir))["status"] == "finished"


def test_skip_bad_lists_the_files_on_the_datamodule(tmp_path):
    bad = _with_two_bad_files(tmp_path / "imgs")
    kept = ImageFolderDataModule(str(tmp_path / "imgs"), image_size=8, skip_bad=True)
    with pytest.warns(Notice, match="skipped 2 unreadable"):
        kept.setup("fit")
    # the file that is no image fails its header check, the cut-short one its decoding
    assert kept.skipped == [str(bad[1]), str(bad[0])]
    assert sum(len(y) for _, y in kept.splits.values()) == 48


def test_skip_bad_lists_the_files_in_the_run_directory(nnlab, workdir):
    bad = _with_two_bad_files(workdir / "imgs")
    result = nnlab("train", *RUN, "trainer.max_epochs=1", "data.skip_bad=true")
    assert result.exit_code == 0, result.output
    listed = (only_run(workdir) / "skipped.txt").read_text().splitlines()
    assert sorted(listed) == sorted(str(path) for path in bad)


def test_auto_holds_a_small_folder_and_streams_above_the_memory_limit(tmp_path):
    _folder(tmp_path, per_class=20)  # 60 images of 3 × 32 × 32 floats: 737 kB

    def chosen(size: int = 32, **kw) -> bool:
        dm = ImageFolderDataModule(str(tmp_path), image_size=size, **kw)
        dm.setup("fit")
        return dm.streamed

    assert chosen() is False
    assert chosen(memory_limit_mb=1) is False
    assert chosen(64, memory_limit_mb=1) is True  # 2.9 MB


def test_auto_streams_through_the_cli_when_the_limit_is_lowered(nnlab, workdir):
    _folder(workdir / "imgs")
    args = ["trainer.max_epochs=1", "data.image_size=128", "data.memory_limit_mb=2"]
    streamed = _metrics(nnlab, workdir, *args)
    held = _metrics(nnlab, workdir, *args, "data.in_memory=true")
    assert {k: streamed[k] for k in COMPARED} == {k: held[k] for k in COMPARED}


def test_a_streamed_run_scores_its_training_split_in_order(nnlab, workdir):
    _folder(workdir / "imgs")
    args = ["trainer.max_epochs=1", "eval_train=true"]
    streamed = _metrics(nnlab, workdir, *args, "data.in_memory=false", "data.workers=1")
    held = _metrics(nnlab, workdir, *args, "data.in_memory=true")
    assert streamed["trainset/acc"] == held["trainset/acc"]
    assert abs(streamed["trainset/loss"] - held["trainset/loss"]) < 1e-6


def test_a_gan_on_streamed_data_is_refused_before_the_run_begins(nnlab, workdir):
    _folder(workdir / "imgs")
    gan = ["model=gan", "logger=none", "trainer.enable_progress_bar=false"]
    result = nnlab("train", *FOLDER, *gan, "data.in_memory=false")
    assert_clear_error(result, ["model=gan needs the train split in memory", "data.in_memory=true"])
    assert not (workdir / "outputs" / "runs").exists() or not any(
        (workdir / "outputs" / "runs").iterdir()
    )


def test_a_test_folder_missing_a_class_keeps_the_training_numbers(tmp_path):
    write_image_folder(tmp_path / "train", per_class=8)
    write_image_folder(tmp_path / "test", classes=("frog",), per_class=3)
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, in_memory=False)
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog", "frog"]
    assert dm.streams["test"].labels.tolist() == [2, 2, 2]
    restored = ImageFolderDataModule(str(tmp_path), image_size=8)
    restored.restore({**dm.fitted, "class_names": ["ant", "cat", "dog", "frog"]})
    restored.setup("fit")
    assert torch.bincount(restored.splits["test"][1]).tolist() == [0, 0, 0, 3]


def test_statistics_are_exact_whatever_the_chunks():
    x = torch.randint(0, 256, (50, 3, 5, 5), dtype=torch.uint8)
    whole, parts = PixelMoments(), PixelMoments()
    whole.add(x)
    for chunk in x.split(7):
        parts.add(chunk)
    assert whole.result(4) == parts.result(4)
    stats = whole.result(4)
    floats = x.float() / 255
    expected_mean = floats.mean(dim=(0, 2, 3), keepdim=True)
    expected_std = floats.std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(torch.tensor(stats["mean"]), expected_mean, atol=1e-6)
    assert torch.allclose(torch.tensor(stats["std"]), expected_std, atol=1e-6)
    assert stats["dims"] == [0, 2, 3]
    assert len(stats_sample(3 * STATS_SAMPLE, seed=0)) == STATS_SAMPLE


@pytest.mark.parametrize("workers", [0, 2])
def test_coco_images_held_in_memory_are_the_images_read_per_batch(tmp_path, workers):
    from nnlab.data.coco import CocoDataModule
    from tests.test_detection_cli import write_coco

    write_coco(tmp_path)

    def module(**kw) -> CocoDataModule:
        dm = CocoDataModule(str(tmp_path), workers=workers, **kw)
        dm.setup()
        return dm

    held, read, tight = module(in_memory=True), module(in_memory=False), module(memory_limit_mb=1)
    assert len(held.cache["train"]) == len(held.records["train"]) and not read.cache
    assert tight.cache, "auto keeps 12 small images (75 kB) under a 1 MB limit"
    for split in ("train", "val", "test"):
        loaders = [held._loader(split), read._loader(split)]
        for (xa, ta), (xb, tb) in zip(*loaders, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(xa, xb, strict=True))
            assert [t["boxes"].tolist() for t in ta] == [t["boxes"].tolist() for t in tb]


def test_coco_auto_reads_per_batch_above_the_memory_limit(tmp_path):
    from nnlab.data.coco import CocoDataModule
    from tests.test_detection_cli import write_coco

    write_coco(tmp_path, size=400)  # 12 images of 400 × 408 RGB: 5.9 MB of pixels
    dm = CocoDataModule(str(tmp_path), memory_limit_mb=4)
    dm.setup()
    assert not dm.cache
