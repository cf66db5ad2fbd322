"""The Lightning Trainer nnlab trains and evaluates with: its callbacks, progress bar, logger and
checkpoint plugin, and a quiet Lightning."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.profilers import PassThroughProfiler

import nnlab
from nnlab import runs
from nnlab.callbacks.checkpoint import ModelCheckpoint
from nnlab.checkpoint_io import DeferredCheckpointIO
from nnlab.errors import UserError
from nnlab.tasks.supervised import SupervisedTask


def quiet_lightning() -> None:
    # Lightning's banner (GPU available..., model summary) drowns nnlab's own summary.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*but have no `val_dataloader`.*")
    # trainer.limit_val_batches=0 on in-memory data: no batches is what the user asked for
    warnings.filterwarnings("ignore", ".*Total length of .* across ranks is zero.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*callbacks used to create the checkpoint need to be.*")
    warnings.filterwarnings("ignore", ".*is an invalid version and will not be supported.*")
    # the tasks sum their metrics over all processes themselves (SupervisedTask._epoch_metrics)
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    # a resumed run writes into its own, non-empty checkpoints/ on purpose
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def versions() -> dict[str, str]:
    return {
        "nnlab": nnlab.__version__,
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "python": platform.python_version(),
    }


def progress_bar(cfg: DictConfig, task: pl.LightningModule) -> list[pl.Callback]:
    """nnlab's bar (callbacks/progress.py): epochs from 1, the epoch's loss and monitored metric,
    the time left; without its it/s column when each Lightning step holds several batches."""
    if not cfg.trainer.enable_progress_bar:
        return []
    from nnlab.callbacks.progress import ProgressBar

    grouping = isinstance(task, SupervisedTask) and cfg.trainer.steps_per_execution > 1
    return [ProgressBar(monitor_of(cfg, task), speed=not grouping)]


def check_accelerator(accelerator: str) -> None:
    """A GPU asked for on a machine without one, in one sentence rather than Lightning's
    MisconfigurationException ('No supported gpu backend found!')."""
    wanted = str(accelerator).lower()
    probes = {"gpu": torch.cuda.is_available, "cuda": torch.cuda.is_available}
    available = {**probes, "mps": torch.backends.mps.is_available}.get(wanted)
    if available is None or available():
        return
    setting = f"trainer.accelerator={accelerator}"
    asked = f"{setting} (what trainer=gpu sets)" if wanted == "gpu" else setting
    raise UserError(
        f"{asked} asks for a GPU, but torch finds no GPU on this machine: train on the CPU "
        f"with trainer=default or trainer.accelerator=cpu instead."
    )


def monitor_of(cfg: DictConfig, task: pl.LightningModule) -> str:
    """The metric that picks best.ckpt: the user's callbacks.monitor, else the task's own."""
    return cfg.callbacks.monitor or task.monitor[0]


_UNPROFILED = contextlib.nullcontext()  # stateless, so one serves every `with`


class QuietProfiler(PassThroughProfiler):
    """Lightning's default profiler, which records nothing, without its cost. Lightning wraps
    every hook it calls, and every step of its loops, in `trainer.profiler.profile(name)`,
    about 300 times an epoch; the default still enters and leaves a generator-based context
    manager each time: 0.7 ms of a 28 ms epoch (tests/perf/bench_overhead.py's MLP at batch
    256). This one hands out a single shared do-nothing context."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager[None]:
        return _UNPROFILED


def make_trainer(
    cfg: DictConfig, run_dir: Path, task: pl.LightningModule, extra_callbacks: list[pl.Callback]
) -> pl.Trainer:
    """The Trainer that trains a run: its checkpoints, early stopping, bar and logger."""
    from nnlab.logger import TensorBoard

    args = _trainer_args(cfg, task)
    callbacks = [*_checkpoint_callbacks(cfg, run_dir, task), *extra_callbacks]
    callbacks += progress_bar(cfg, task)
    callbacks += result_files(run_dir, task)
    logger: Any = False
    if cfg.logger.kind == "tensorboard":
        logger = TensorBoard(
            save_dir=str(run_dir), name=runs.TB, version="", default_hp_metric=False
        )
    trainer = plain_trainer(
        **args,
        logger=logger,
        callbacks=callbacks,
        plugins=[DeferredCheckpointIO(cfg.callbacks.checkpoint_interval_s)],
        default_root_dir=str(run_dir),
    )
    if logger:
        logger.steps = lambda: trainer.global_step
    return trainer


def result_files(run_dir: Path, task: pl.LightningModule) -> list[pl.Callback]:
    """metrics.csv, and a GAN's samples through training for plots/ (nnlab/plots.py)."""
    from nnlab.callbacks.metrics_csv import MetricsCsv
    from nnlab.callbacks.sample_strip import SampleStrip
    from nnlab.tasks.gan import GanTask

    gan = isinstance(task, GanTask)
    return [MetricsCsv(run_dir / runs.METRICS_CSV), *([SampleStrip()] if gan else [])]


def plain_trainer(**args: Any) -> pl.Trainer:
    """A Trainer with nnlab's quiet defaults (no model summary, no sanity check, no logger or
    checkpoints unless given); training, evaluation and the reference judge all use it."""
    # A profiler the user asked for records as ever; otherwise one that records nothing and
    # costs nothing (QuietProfiler).
    args["profiler"] = args.get("profiler") or QuietProfiler()
    defaults = {"logger": False, "enable_model_summary": False, "num_sanity_val_steps": 0}
    trainer = pl.Trainer(**{**defaults, **args})
    # Deterministic mode (trainer.deterministic) also has torch fill every new tensor with NaN, a
    # guard for code that reads memory it never wrote. PyTorch documents that code which does
    # not, such as torch's own layers, stays deterministic without it; it costs 1-3% of a small
    # model's epoch (tests/perf/bench_overhead.py).
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def eval_trainer(cfg: DictConfig, task: pl.LightningModule) -> pl.Trainer:
    """The Trainer that tests a saved run again on the devices its config names."""
    check_accelerator(cfg.trainer.accelerator)
    return plain_trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        callbacks=progress_bar(cfg, task),
    )


def _trainer_args(cfg: DictConfig, task: pl.LightningModule) -> dict[str, Any]:
    """cfg.trainer as pl.Trainer arguments, less what nnlab applies itself."""
    from nnlab.distributed import single_machine_strategy

    check_accelerator(cfg.trainer.accelerator)
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    del args["steps_per_execution"]  # nnlab's, not Lightning's: build() hands it to the data
    if isinstance(task, SupervisedTask):
        # Applied by the task and its data (build()): Lightning refuses to clip for a task that
        # steps its own optimizer, and would count lists of batches against the limit.
        for key in ("gradient_clip_val", "gradient_clip_algorithm"):
            del args[key]
        for split in ("train", "val", "test"):
            del args[f"limit_{split}_batches"]
    args = {k: v for k, v in args.items() if not (k.startswith("limit_") and v is None)}
    # one machine: the rendezvous listens on loopback only (nnlab/distributed.py says why)
    args["strategy"] = single_machine_strategy(args["strategy"], args["num_nodes"])
    # Validate at least once (at the end), or no metric would ever pick best.ckpt.
    args["check_val_every_n_epoch"] = min(args["check_val_every_n_epoch"], args["max_epochs"])
    return args


def _checkpoint_callbacks(
    cfg: DictConfig, run_dir: Path, task: pl.LightningModule
) -> list[pl.Callback]:
    """best.ckpt (by the monitor), last.ckpt (every epoch) and early stopping."""
    from pytorch_lightning.callbacks import EarlyStopping

    monitor = monitor_of(cfg, task)
    lower = runs.lower_is_better(monitor)
    guessed = task.monitor[1] if monitor == task.monitor[0] else ("max", "min")[lower]
    mode = cfg.callbacks.mode or guessed
    kept = {"dirpath": run_dir / runs.CHECKPOINTS, "save_top_k": 1, "enable_version_counter": False}
    # With validation off (trainer.limit_val_batches=0) a val/ monitor never gets a value.
    unseen = cfg.trainer.limit_val_batches == 0 and monitor.startswith("val/")
    patience = cfg.callbacks.early_stopping_patience
    if patience > 0 and unseen:
        raise UserError(
            f"callbacks.early_stopping_patience={patience} stops training when {monitor} stops "
            f"improving, but trainer.limit_val_batches=0 turns validation off, so {monitor} "
            f"never comes. Stop on a training metric (callbacks.monitor=train/loss), validate "
            f"(drop trainer.limit_val_batches=0), or set callbacks.early_stopping_patience=0."
        )
    # Weights only (a third of the size with Adam's state): evaluating and predicting need no
    # more, and resuming reads last.ckpt. None when its monitor never comes: the run is scored
    # with last.ckpt, and Lightning does not warn that it cannot find the metric.
    best = ModelCheckpoint(
        filename="best", monitor=monitor, mode=mode, save_weights_only=True, **kept
    )
    return [
        *([] if unseen else [best]),
        # Every epoch's end, for resuming. Not save_last=True: Lightning then writes last.ckpt
        # only in epochs that improve best.ckpt. save_on_train_epoch_end: left to Lightning, it
        # saves only at validation when trainer.check_val_every_n_epoch > 1 (a GAN's 10), so a
        # finished run's last.ckpt could be epochs old and resuming would redo them.
        ModelCheckpoint(filename="last", save_on_train_epoch_end=True, **kept),
        *([EarlyStopping(monitor=monitor, mode=mode, patience=patience)] if patience > 0 else []),
    ]


@contextlib.contextmanager
def plain_cuda_probe(trainer: pl.Trainer) -> Iterator[None]:
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when imported, so that processes it forks
    can still start CUDA. Until CUDA starts, torch then asks NVML afresh at every
    torch.cuda.is_available(), and every optimizer step calls it: about 70 µs a step on a
    machine without a GPU, as much as a small model's arithmetic. A run on the CPU never starts
    CUDA, so it trains without the variable."""
    name = "PYTORCH_NVML_BASED_CUDA_CHECK"
    saved = os.environ.get(name)
    if trainer.strategy.root_device.type == "cpu":
        os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved
