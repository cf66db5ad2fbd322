"""train(): one run's lifecycle, from a checked config to its final, recorded metrics."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

import nnlab
from nnlab import compat, distributed, run_log, runs
from nnlab.build import build, check_monitor
from nnlab.callbacks.grad_flow import GradientFlow
from nnlab.callbacks.stop_signals import StopSignals
from nnlab.data.base import TensorDataModule
from nnlab.errors import RunInterrupted, TrainingError, UserError, storage_failure
from nnlab.logger import TensorBoard
from nnlab.models.layers import count_parameters
from nnlab.plots import save_run_plots
from nnlab.startup import process_rank
from nnlab.tasks import gan as gan_task
from nnlab.tasks.supervised import SupervisedTask
from nnlab.trainer import (
    check_accelerator,
    make_trainer,
    plain_cuda_probe,
    quiet_lightning,
    versions,
)

__all__ = ["Result", "RunInterrupted", "TrainingError", "train"]


@dataclass
class Result:
    run_dir: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)


@run_log.captured()  # library warnings and log lines: to the run's log.txt
def train(
    cfg: DictConfig,
    choices: dict[str, str],
    overrides: list[str],
    runs_dir: Path | None = None,
    callbacks: list[pl.Callback] | None = None,
    resume: Path | None = None,
) -> Result:
    """Train one run end to end; returns its directory and final metrics.

    `runs_dir` puts the run directory somewhere other than <output_dir>/runs (sweep trials);
    `callbacks` are added to the trainer's own; `resume` continues that run directory from its
    checkpoints/last.ckpt (see restore.run_to_resume), and `overrides` are then all of the run's.
    The first process holds the run's lock while it trains: one writer per run.
    """
    quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Everything that can reject the user's input happens before the run directory exists.
    # A resumed run scales its data as it did when it began, whatever its files hold now.
    datamodule, task = build(cfg, runs.read_preprocessing(resume) if resume else None)
    check_monitor(cfg, task)
    lead = process_rank() == 0  # only the first process of a distributed run writes files
    run_dir = resume or _run_directory(cfg, choices, runs_dir)
    with runs.locked(run_dir) if lead else contextlib.nullcontext():
        config = OmegaConf.to_container(cfg, resolve=True)
        fitted = getattr(datamodule, "fitted", {})
        record = runs.RunRecord(run_dir, config, overrides, lead, resume is not None, fitted)
        # A refused resume writes nothing; the first process alone writes log.txt (the others
        # may be on other machines, whose appends to one shared file could interleave).
        run_log.keep_in(run_dir, lambda: record.lead and record.started)
        trainer, flow, stop = _assemble(cfg, record, task, callbacks or [])
        opening = {
            "choices": choices,
            "params": count_parameters(task.model),
            "versions": versions(),
        }
        if resume is not None:
            opening["resumed_from"] = str(run_dir / runs.CHECKPOINTS / runs.LAST)
        record.begin(opening)
        with _session(record, trainer, stop):
            _open_board(trainer, record)
            _fit(trainer, task, datamodule, record, flow)
            if not trainer.interrupted:
                _score(cfg, trainer, task, datamodule, record)
            # read after the test: streamed data finds unreadable files as it goes
            record.list_skipped(list(getattr(datamodule, "skipped", [])))
        if trainer.interrupted:  # stopped by a callback (a pruned sweep trial), not a signal
            record.end("interrupted")
            return Result(run_dir, record.summary)
        record.end("finished")
        _log_final_metrics(trainer, record)
        if record.lead:  # after the run is recorded: a figure never slows or fails it
            save_run_plots(run_dir, trainer)
        return Result(run_dir, record.summary)


def _run_directory(cfg: DictConfig, choices: dict[str, str], runs_dir: Path | None) -> Path:
    """A new run directory; in a distributed run, the one its first process made."""
    check_accelerator(cfg.trainer.accelerator)  # before a cluster's processes meet on a device
    return distributed.agreed_run_dir(
        cfg.trainer, lambda: _new_run_directory(cfg, choices, runs_dir)
    )


def _new_run_directory(cfg: DictConfig, choices: dict[str, str], runs_dir: Path | None) -> Path:
    root = runs_dir or runs.runs_root(cfg.output_dir)
    name = cfg.name or f"{choices.get('model', 'model')}_{choices.get('data', 'data')}"
    try:
        return runs.create_run_dir(root, name)
    except OSError as err:
        raise UserError(
            f"Cannot create a run directory in {root}: {err.strerror or err}. Make it writable "
            f"(and check the disk has room), or write runs elsewhere with output_dir=/some/path."
        ) from None


class _StartRecord(pl.Callback):
    """Writes a resumed run's files once its training starts: Lightning has restored the
    checkpoint by then, so a resume that fails before leaves the run as it was."""

    def __init__(self, record: runs.RunRecord) -> None:
        self.record = record

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.start()


def _assemble(
    cfg: DictConfig, record: runs.RunRecord, task: pl.LightningModule, callbacks: list[Any]
) -> tuple[pl.Trainer, GradientFlow | None, StopSignals]:
    """The trainer with nnlab's callbacks; a bad trainer setting is a UserError, and a new run's
    directory, made a moment ago and still empty, goes rather than litter outputs/."""
    task.config_stamp = {
        "config": record.config,
        "version": nnlab.__version__,
        "preprocessing": record.preprocessing,
    }
    stop = StopSignals()
    flow = None
    if cfg.callbacks.grad_flow and isinstance(task, SupervisedTask):
        flow = GradientFlow(every=cfg.callbacks.grad_flow_every)
    # Only a resumed run needs _StartRecord: Lightning calls every callback at every step, about
    # 1% of a small model's epoch for one that acts once.
    starts = [_StartRecord(record)] if record.resumed else []
    extra = [*callbacks, stop, *starts, *([flow] if flow else [])]
    try:
        return make_trainer(cfg, record.run_dir, task, extra), flow, stop
    except Exception as err:  # accelerator=gpu without a GPU, an unknown argument, ...
        if not record.resumed and record.lead:
            import shutil

            shutil.rmtree(record.run_dir)
        if isinstance(err, UserError):
            raise
        raise UserError(f"Bad trainer setting: {type(err).__name__}: {err}") from None


@contextlib.contextmanager
def _session(record: runs.RunRecord, trainer: pl.Trainer, stop: StopSignals) -> Iterator[None]:
    """Fit and score inside: a failure or a stop signal ends the record as failed or
    interrupted and is raised as TrainingError or RunInterrupted; the times add up either way."""
    sigint = signal.getsignal(signal.SIGINT)
    # Lightning's DDP launcher starts the other processes by running this command again: they
    # must find this run directory rather than make their own.
    distributed.share_run_dir(record.run_dir)
    start = time.perf_counter()
    try:
        yield
    except UserError as err:
        record.summary.update(status="failed", error=str(err))
        raise
    except Exception as err:
        if stop.received:  # a peer of a distributed run stopped first (see StopSignals)
            record.summary["status"] = "interrupted"
            raise RunInterrupted(record.run_dir, trainer.current_epoch) from None
        raise _failed(record, err) from err
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C and SIGTERM (Lightning turns both into SystemExit): not a failure.
        record.summary["status"] = "interrupted"
        raise RunInterrupted(record.run_dir, trainer.current_epoch) from None
    finally:
        record.summary["wall_time_s"] = record.earlier["wall_time_s"] + time.perf_counter() - start
        # On a full disk this write fails as well: metrics.json keeps its last whole version,
        # and the error that stopped the run is the one reported.
        with contextlib.suppress(OSError):
            record.save()
            if record.summary["status"] == "failed":
                _close_board(trainer, record, "failed")
        distributed.unshare_run_dir()  # never to a later run of this process or its children
        # Lightning ignores further Ctrl-C while it shuts down and never restores the handler.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)


def _failed(record: runs.RunRecord, err: Exception) -> TrainingError:
    record.summary.update(status="failed", error=f"{type(err).__name__}: {err}")
    problem = storage_failure(err)
    if problem is not None:  # no error.log: the disk that refused would refuse it too
        return TrainingError(
            f"{problem}. Free some space or give a writable output_dir=, then continue with "
            f"nnlab train --resume {record.run_dir}: its {runs.CHECKPOINTS}/{runs.LAST} "
            f"(written at each epoch's end, and replaced only by a whole new one) is the last "
            f"epoch saved.",
            record.run_dir,
        )
    record.log_error(traceback.format_exc())
    return TrainingError(f"{type(err).__name__}: {err}", record.run_dir)


def _fit(
    trainer: pl.Trainer,
    task: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    record: runs.RunRecord,
    flow: GradientFlow | None,
) -> None:
    """Train (from last.ckpt when resuming); training metrics and gradient flow to the record."""
    ckpt_path = record.summary.get("resumed_from")
    start = time.perf_counter()
    with plain_cuda_probe(trainer), compat.patched_for_fit():
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    # The first process writes the checkpoints as its fit ends (DeferredCheckpointIO): the
    # others wait for them before they look for best.ckpt and load it.
    trainer.strategy.barrier("nnlab checkpoints written")
    summary = record.summary
    summary["fit_time_s"] = record.earlier["fit_time_s"] + time.perf_counter() - start
    summary["epochs"] = trainer.current_epoch
    summary.update(prefixed(trainer.callback_metrics, "train/"))
    if flow is not None and flow.summary:
        # [layer, last epoch's mean norm] pairs: metrics.json sorts keys, and the layer order
        # (input to output) is the point
        summary["grad_norms"] = [[name, norm] for name, norm in flow.summary.items()]
        summary["grad_ratio_first_last"] = flow.ratios[-1]
        summary["warnings"] = sorted(flow.warned)
    if getattr(task, "diverged_at", None) and not trainer.interrupted:
        raise FloatingPointError(
            f"training diverged: the training loss became NaN or infinite in epoch "
            f"{task.diverged_at}, so training stopped ({runs.CHECKPOINTS}/{runs.LAST} keeps the "
            f"last state). Lower optimizer.lr, clip gradients (trainer.gradient_clip_val=1.0), "
            f"or add norm=batch."
        )


def _score(
    cfg: DictConfig,
    trainer: pl.Trainer,
    task: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    record: runs.RunRecord,
) -> None:
    """Validate and test the best checkpoint (last.ckpt when none was kept)."""
    run_dir = record.run_dir
    chosen = runs.BEST if (run_dir / runs.CHECKPOINTS / runs.BEST).exists() else runs.LAST
    record.summary["checkpoint"] = f"{runs.CHECKPOINTS}/{chosen}"
    best = str(run_dir / runs.CHECKPOINTS / chosen)
    # Re-validating the best checkpoint must not add a stray point to the val curves.
    loggers, trainer.loggers = trainer.loggers, []
    val = trainer.validate(task, datamodule=datamodule, ckpt_path=best, verbose=False)
    if cfg.eval_train and isinstance(task, SupervisedTask):
        record.summary.update(_score_training_split(trainer, task, datamodule, best))
    trainer.loggers = loggers
    test = trainer.test(task, datamodule=datamodule, ckpt_path=best, verbose=False)
    if val:  # none with trainer.limit_val_batches=0
        record.summary.update(prefixed(val[0], "val/"))
    record.summary.update(prefixed(test[0], "test/"))
    if getattr(task, "test_samples", None):  # an accuracy's interval needs the test set's size
        record.summary["test_samples"] = task.test_samples
    if record.lead:
        save_samples(task, run_dir)


def _open_board(trainer: pl.Trainer, record: runs.RunRecord) -> None:
    """A new run's config and HParams session in TensorBoard (a resumed run has them)."""
    if isinstance(trainer.logger, TensorBoard) and record.lead and not record.resumed:
        root = Path(record.config["output_dir"])
        choices = record.summary["choices"]
        trainer.logger.open_session(root, record.config, choices, record.overrides)


def _close_board(
    trainer: pl.Trainer,
    record: runs.RunRecord,
    status: str,
    metrics: dict[str, float] | None = None,
) -> None:
    """The run's HParams session ends with its status (and final metrics, when it finished)."""
    if isinstance(trainer.logger, TensorBoard) and record.lead and record.started:
        root = Path(record.config["output_dir"])
        trainer.logger.close_session(root, status, metrics or {})


def _log_final_metrics(trainer: pl.Trainer, record: runs.RunRecord) -> None:
    """The final metrics go to the HParams session (not to charts of their own)."""
    metrics = {
        k: float(v) for k, v in record.summary.items() if "/" in k and isinstance(v, int | float)
    }
    _close_board(trainer, record, "finished", metrics)
    if trainer.logger and record.lead:
        trainer.logger.finalize("success")


def _score_training_split(
    trainer: pl.Trainer, task: pl.LightningModule, datamodule: TensorDataModule, ckpt: str
) -> dict[str, Any]:
    """The checkpoint's metrics on its own training data, in eval mode (no dropout), as
    `trainset/...`: the honest train side of a train-test gap."""
    loader = datamodule.training_split_in_order()
    scores = trainer.test(task, dataloaders=loader, ckpt_path=ckpt, verbose=False)[0]
    return {k.replace("test/", "trainset/", 1): v for k, v in prefixed(scores, "test/").items()}


def prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The metrics whose names start with `prefix`, as plain floats."""
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def save_samples(task: pl.LightningModule, directory: Path) -> None:
    """A GAN's sample grid, replaced whole; nothing for other tasks."""
    if isinstance(task, gan_task.GanTask):
        with runs.written_whole(directory / runs.SAMPLES) as partial:
            task.save_grid(partial)
