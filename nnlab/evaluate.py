"""`nnlab eval`: test a trained model again, rebuilt from its run's saved config."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl

from nnlab import runs
from nnlab.build import build
from nnlab.models.layers import count_parameters
from nnlab.restore import load_weights, saved_preprocessing, saved_run
from nnlab.train import Result, prefixed, save_samples
from nnlab.trainer import eval_trainer, quiet_lightning


def evaluate(target: str, overrides: list[str], output_dir: str = "outputs") -> Result:
    """Test a trained model: rebuild it from its run's saved config and load the checkpoint."""
    quiet_lightning()
    run_dir, ckpt, checkpoint, cfg = saved_run(target, overrides, output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # scaled and encoded as in training, by what the data learned then
    datamodule, task = build(cfg, saved_preprocessing(run_dir, checkpoint))
    trainer = eval_trainer(cfg, task)
    start = time.perf_counter()
    # The checkpoint is already in memory (it may carry the config): load it once, here.
    load_weights(task, checkpoint, ckpt)
    test = trainer.test(task, datamodule=datamodule, verbose=False)
    metrics: dict[str, Any] = prefixed(test[0], "test/")
    if getattr(task, "test_samples", None):  # an accuracy's interval needs the test set's size
        metrics["test_samples"] = task.test_samples
    out_dir = run_dir if run_dir is not None else ckpt.parent
    save_samples(task, out_dir)
    metrics.update(
        checkpoint=str(ckpt),
        # Lightning stores the 0-based index of the epoch that wrote the checkpoint.
        epoch=checkpoint.get("epoch", -1) + 1,
        params=count_parameters(task.model),
        wall_time_s=time.perf_counter() - start,
        overrides=list(overrides),
    )
    runs.write_json(out_dir / runs.EVAL, metrics)
    return Result(run_dir or out_dir, metrics)
