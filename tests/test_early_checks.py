"""Settings that only the data or the task can check are refused before the first step (issue
23): no epoch is spent on a run that was always going to fail, and no run directory is left."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.helpers import QUICK, assert_clear_error, only_run


def _no_runs(workdir) -> bool:
    return not (workdir / "outputs" / "runs").exists() or not any(
        (workdir / "outputs" / "runs").iterdir()
    )


def test_split_fractions_that_leave_nothing_to_train_on(nnlab, workdir):
    result = nnlab("train", "data.val_fraction=0.9", *QUICK)
    assert_clear_error(result, ["data.val_fraction=0.9 + data.test_fraction=0.15", "under 1"])
    assert _no_runs(workdir)


def test_a_table_with_its_own_test_file_ignores_the_test_fraction(nnlab, workdir):
    rows = "\n".join(f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(60))
    (workdir / "t.csv").write_text("a,b,label\n" + rows + "\n")
    (workdir / "test.csv").write_text("a,b,label\n" + rows + "\n")
    table = ["data=table", "data.path=t.csv", "data.target=label", "data.test_path=test.csv"]
    result = nnlab("train", *table, "data.val_fraction=0.5", "data.test_fraction=0.5", *QUICK)
    assert result.exit_code == 0, result.output


def test_a_monitor_the_task_does_not_record(nnlab, workdir):
    result = nnlab("train", "callbacks.monitor=val/los", *QUICK)
    assert_clear_error(result, ["callbacks.monitor=val/los", "val/acc", "Did you mean 'val/loss'?"])
    assert _no_runs(workdir)


def test_a_monitor_the_task_records_is_used(nnlab, workdir):
    result = nnlab("train", "callbacks.monitor=val/loss", "callbacks.mode=min", *QUICK)
    assert result.exit_code == 0, result.output
    assert (only_run(workdir) / "checkpoints" / "best.ckpt").exists()


def test_a_kernel_larger_than_the_images(nnlab, workdir):
    result = nnlab("train", "model=cnn", "model.kernel_size=100", *QUICK)
    assert_clear_error(result, ["model.kernel_size=100", "8×8 images", "model.kernel_size=8"])
    assert _no_runs(workdir)


def test_an_even_kernel_on_odd_sized_images_trains(nnlab, workdir):
    # "k // 2 on both sides" padding grows a map by one per even-kernel conv: 7 → 8 → pool 4
    # → 5 → pool 2, where the classifier expected 7 // 2 // 2 = 1, and the first step failed.
    rng = np.random.default_rng(0)
    np.savez(
        workdir / "d.npz", x=rng.random((120, 1, 7, 7), dtype=np.float32), y=rng.integers(0, 3, 120)
    )
    args = ["data=arrays", "data.path=d.npz", "model=cnn", "model.kernel_size=4"]
    result = nnlab("train", *args, "model.channels=[4,4]", *QUICK)
    assert result.exit_code == 0, result.output


def test_the_first_line_says_what_is_being_built(nnlab):
    result = nnlab("train", "trainer.max_epochs=1", "trainer.enable_progress_bar=false")
    assert result.exit_code == 0, result.output
    assert result.output.lstrip().startswith("Training mlp on digits, 1 epoch, seed 42")


def test_heavy_imports_leave_the_collector_on_with_the_libraries_frozen():
    code = (
        "import gc\n"
        "from nnlab.startup import heavy_imports\n"
        "with heavy_imports():\n"
        "    assert not gc.isenabled()\n"
        "    import pytorch_lightning\n"
        "assert gc.isenabled()\n"
        "frozen = gc.get_freeze_count()\n"
        "assert frozen > 100_000, frozen\n"
        "with heavy_imports():\n"  # loaded already: nothing more is frozen, the collector stays on
        "    assert gc.isenabled()\n"
        "assert gc.get_freeze_count() == frozen\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
