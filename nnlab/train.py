"""train(cfg) and evaluate(cfg, checkpoint): build data, model, task and trainer; fit; test."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import nnlab
from nnlab import lightning_fixes, runs
from nnlab.callbacks.checkpoint import ModelCheckpoint
from nnlab.callbacks.grad_flow import GradientFlow
from nnlab.callbacks.stop_signals import StopSignals
from nnlab.checkpoint_io import DeferredCheckpointIO
from nnlab.data.base import TensorBatches, TensorDataModule
from nnlab.errors import UserError, storage_failure
from nnlab.models.detection import BUILDER as DETECTOR
from nnlab.models.gan import GAN
from nnlab.models.layers import count_parameters
from nnlab.models.rnn import RecurrentNet
from nnlab.reference import reference_judge
from nnlab.scratch.engine import BackpropMLP
from nnlab.scratch.optim import scratch_optimizer
from nnlab.tasks import gan as gan_task
from nnlab.tasks.classification import ClassificationTask
from nnlab.tasks.detection import DetectionTask
from nnlab.tasks.sequence import RegressionTask
from nnlab.tasks.supervised import SupervisedTask


class TrainingError(Exception):
    """Training itself failed (not the user's input): exit code 1, details in the run directory."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


RUN_DIR_ENV = "NNLAB_RUN_DIR"


def process_rank() -> int:
    """This process's rank in a distributed run (0 when alone), known before any trainer exists:
    torchrun sets RANK, SLURM SLURM_PROCID, Lightning's own launcher NODE_RANK and LOCAL_RANK."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("NODE_RANK", 0)) * 1000 + int(os.environ.get("LOCAL_RANK", 0))


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training; the run keeps checkpoints/last.ckpt of its last
    complete epoch and can be resumed. A KeyboardInterrupt, so whatever stops on Ctrl-C stops."""

    def __init__(self, run_dir: Path, epochs_done: int) -> None:
        super().__init__(f"training interrupted after {epochs_done} complete epochs")
        self.run_dir = run_dir
        self.epochs_done = epochs_done


@dataclass
class Result:
    run_dir: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)


def _quiet_lightning() -> None:
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


def _instantiate(node: DictConfig, **kwargs: Any) -> Any:
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        # Hydra wraps what builders raise; a UserError must reach the CLI as itself.
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def _check_detection_pairing(detector: bool, datamodule: pl.LightningDataModule) -> None:
    # Detection data (boxes per image) and detection models only make sense together.
    detection_data = getattr(datamodule, "kind", "") == "detection"
    if detector and not detection_data:
        raise UserError(
            f"model=faster_rcnn detects objects, so it needs a detection dataset with boxes and "
            f"labels per image, but {type(datamodule).__name__} has one label per sample. Use "
            f"data=shapes (synthetic, no download) or data=coco data.root=/path/to/dataset."
        )
    if detection_data and not detector:
        raise UserError(
            f"{type(datamodule).__name__} is an object-detection dataset (boxes and labels per "
            f"image), which only model=faster_rcnn reads. Use model=faster_rcnn, or a "
            f"classification dataset (digits, mnist, cifar10, image_folder, ...) for this model."
        )


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The datamodule (set up) and the task, both ready to train; raises UserError on bad input.

    model=gan gets a GanTask and model=faster_rcnn a DetectionTask (which needs detection data);
    otherwise the data decides: class labels get a ClassificationTask, real-valued targets a
    RegressionTask.
    """
    datamodule = _instantiate(cfg.data)
    datamodule.setup("fit")
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    detector = spec.get("_target_") == DETECTOR
    _check_detection_pairing(detector, datamodule)
    # A GAN's task settings (objective, lr_g, ...) sit in its model config, beside the nets'.
    options = {key: spec.pop(key) for key in gan_task.OPTIONS if key in spec}
    # how to run the network, not what it is: applied to whatever the builder returns
    speed = {key: spec.pop(key) for key in ("compile", "channels_last") if key in spec}
    model = _instantiate(
        OmegaConf.create(spec),
        input_shape=datamodule.input_shape,
        num_outputs=datamodule.num_outputs,
        _convert_="all",
    )
    if speed.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    if speed.get("compile"):
        model.compile()  # in place: parameter names, and so checkpoints, stay as without it
    if datamodule.variable_length and not isinstance(model, RecurrentNet):
        raise UserError(
            "This dataset has sequences of different lengths (data.min_length < data.length), "
            "which only model=rnn reads (it packs them). Use model=rnn, or set "
            "data.min_length=null for sequences all of one length."
        )
    if isinstance(model, BackpropMLP):
        if datamodule.kind == "regression":
            raise UserError(
                "model.engine=scratch trains classifiers (cross_entropy or mse on class labels); "
                "this dataset has real-valued targets. Use model.engine=autograd."
            )
        optimizer = scratch_optimizer(OmegaConf.to_container(cfg.optimizer, resolve=True))
    else:
        optimizer = _instantiate(cfg.optimizer, _convert_="all")  # plain betas, no omegaconf
    scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True)
    if detector:
        return datamodule, DetectionTask(model, optimizer, scheduler, datamodule.class_names)
    if isinstance(model, GAN):
        if cfg.trainer.gradient_clip_val:
            raise UserError(
                f"trainer.gradient_clip_val={cfg.trainer.gradient_clip_val} does not apply to "
                f"model=gan: its two optimizers are stepped by the task itself, where Lightning "
                f"cannot clip. Remove the override (GAN stability comes from "
                f"model.label_smoothing, norm= and lower model.lr_g / model.lr_d)."
            )
        x = datamodule.splits["train"][0]
        judge = reference_judge(
            datamodule,
            OmegaConf.to_container(cfg.data, resolve=True),
            Path(cfg.output_dir) / "reference",
        )
        data_range = (float(x.min()), float(x.max()))
        return datamodule, gan_task.GanTask(
            model, optimizer, scheduler, data_range, judge, **options
        )
    if datamodule.kind == "regression":
        task: SupervisedTask = RegressionTask(model, optimizer, scheduler)
    else:
        task = ClassificationTask(
            model,
            optimizer,
            scheduler,
            num_classes=datamodule.num_classes,
            loss=cfg.loss,
            class_names=datamodule.class_names,
        )
    # The task steps the optimizer itself, several batches per Lightning step (see _trainer).
    datamodule.steps_per_execution = cfg.trainer.steps_per_execution
    datamodule.limits = {s: cfg.trainer[f"limit_{s}_batches"] for s in ("train", "val", "test")}
    task.gradient_clip = (cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm)
    return datamodule, task


def _progress_bar(cfg: DictConfig, task: pl.LightningModule) -> list[pl.Callback]:
    """Lightning's Rich bar; without its it/s column when each Lightning step holds several
    batches (trainer.steps_per_execution): that rate would not be batches per second, and
    reads 0.00 when an epoch is a single step."""
    if not cfg.trainer.enable_progress_bar:
        return []
    grouping = isinstance(task, SupervisedTask) and cfg.trainer.steps_per_execution > 1
    from pytorch_lightning.callbacks import RichProgressBar
    from pytorch_lightning.callbacks.progress.rich_progress import ProcessingSpeedColumn

    class Bar(RichProgressBar):
        def configure_columns(self, trainer: pl.Trainer) -> list:
            columns = super().configure_columns(trainer)
            # Distributed runs take one batch per step (TensorBatches), so their rate is right.
            grouped = grouping and trainer.world_size == 1
            return [c for c in columns if not (grouped and isinstance(c, ProcessingSpeedColumn))]

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            super().on_train_start(trainer, pl_module)
            # Rich draws the whole bar at once whenever a bar is added or reset, twice per
            # epoch: 5% of a small model's epoch. The bar's thread redraws it within
            # 1/refresh_rate s, and the final frame is drawn when the bar stops.
            if self.progress is not None:
                self.progress.refresh = self.progress.soft_refresh

    # Lightning's default Rich bar redraws up to 100×/s from a thread that competes with
    # training: +40% per epoch on small models (tests/perf/bench_overhead.py).
    return [Bar(refresh_rate=10)]


def _trainer(
    cfg: DictConfig, run_dir: Path, task: pl.LightningModule, extra_callbacks: list[pl.Callback]
) -> pl.Trainer:
    from pytorch_lightning.callbacks import EarlyStopping

    from nnlab.distributed import single_machine_strategy
    from nnlab.logger import TensorBoard

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
    monitor = cfg.callbacks.monitor or task.monitor[0]
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
    callbacks: list[pl.Callback] = [
        *([] if unseen else [best]),
        # Every epoch's end, for resuming. Not save_last=True: Lightning then writes last.ckpt
        # only in epochs that improve best.ckpt.
        ModelCheckpoint(filename="last", **kept),
        *extra_callbacks,
    ]
    callbacks += _progress_bar(cfg, task)
    if patience > 0:
        callbacks.append(
            EarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=patience,
            )
        )
    logger: Any = False
    if cfg.logger.kind == "tensorboard":
        logger = TensorBoard(
            save_dir=str(run_dir), name=runs.TB, version="", default_hp_metric=False
        )
    trainer = pl.Trainer(
        **args,
        logger=logger,
        callbacks=callbacks,
        plugins=[DeferredCheckpointIO(cfg.callbacks.checkpoint_interval_s)],
        default_root_dir=str(run_dir),
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    # Deterministic mode (trainer.deterministic) also has torch fill every new tensor with NaN, a
    # guard for code that reads memory it never wrote. PyTorch documents that code which does
    # not, such as torch's own layers, stays deterministic without it; it costs 1-3% of a small
    # model's epoch (tests/perf/bench_overhead.py).
    torch.utils.deterministic.fill_uninitialized_memory = False
    if logger:
        logger.steps = lambda: trainer.global_step
    return trainer


def _times_so_far(run_dir: Path) -> dict[str, float]:
    """The fit and wall time a run spent before this session, from its metrics.json: a resumed
    run reports its whole training time, as `nnlab runs` compares runs by it. An interrupted
    session wrote no fit time; its wall time, counted from the fit's start, is all fitting."""
    before = runs.read_metrics(run_dir)
    wall = before.get("wall_time_s", 0.0)
    return {"fit_time_s": before.get("fit_time_s", wall), "wall_time_s": wall}


def _prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def run_name(cfg: DictConfig, choices: dict[str, str]) -> str:
    return cfg.name or f"{choices.get('model', 'model')}_{choices.get('data', 'data')}"


def _save_samples(task: pl.LightningModule, directory: Path) -> None:
    if isinstance(task, gan_task.GanTask):
        with runs.written_whole(directory / runs.SAMPLES) as partial:
            task.save_grid(partial)


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
    _quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Everything that can reject the user's input happens before the run directory exists.
    datamodule, task = build(cfg)
    lead = process_rank() == 0  # only the first process of a distributed run writes files
    shared = os.environ.get(RUN_DIR_ENV)
    if resume is not None:
        run_dir = resume
    elif shared:
        # a distributed run: every process trains, in the one directory the first one made
        run_dir = Path(shared)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = _new_run_dir(runs_dir or runs.runs_root(cfg.output_dir), run_name(cfg, choices))
    with runs.locked(run_dir) if lead else contextlib.nullcontext():
        run = _RunFiles(run_dir, cfg, overrides, lead, resumed=resume is not None)
        return _fit(cfg, choices, run, datamodule, task, callbacks or [])


class _RunFiles(pl.Callback):
    """Writes a run's config.yaml, overrides.yaml and metrics.json, each replaced whole. A new
    run's are written once its trainer is built; a resumed run's only when its training starts
    (Lightning has restored the checkpoint by then): a resume that is refused or fails before
    leaves every file of the run as it was."""

    def __init__(
        self, run_dir: Path, cfg: DictConfig, overrides: list[str], lead: bool, resumed: bool
    ) -> None:
        self.run_dir, self.lead, self.resumed = run_dir, lead, resumed
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.overrides = list(overrides)
        self.started = False
        self.summary: dict[str, Any] = {}

    def start(self, summary: dict[str, Any]) -> None:
        self.summary, self.started = summary, True
        if self.lead:
            runs.write_yaml(self.run_dir / runs.CONFIG, self.config)
            runs.write_yaml(self.run_dir / runs.OVERRIDES, {"overrides": self.overrides})
        self.record(summary)

    def record(self, summary: dict[str, Any]) -> None:
        if self.lead and self.started:
            runs.write_json(self.run_dir / runs.METRICS, summary)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.resumed and not self.started:
            self.start(self.summary)


def _fit(
    cfg: DictConfig,
    choices: dict[str, str],
    run: _RunFiles,
    datamodule: pl.LightningDataModule,
    task: pl.LightningModule,
    callbacks: list[pl.Callback],
) -> Result:
    """Fit, pick the best checkpoint, validate and test it; the run's files record each stage."""
    run_dir, lead, resolved = run.run_dir, run.lead, run.config
    ckpt_path = str(run_dir / runs.CHECKPOINTS / runs.LAST) if run.resumed else None
    earlier = _times_so_far(run_dir) if run.resumed else {"fit_time_s": 0.0, "wall_time_s": 0.0}
    try:
        task.config_stamp = {"config": resolved, "version": nnlab.__version__}
        stop = StopSignals()
        extra = [*callbacks, stop, run]
        flow = None
        if cfg.callbacks.grad_flow and isinstance(task, SupervisedTask):
            flow = GradientFlow(every=cfg.callbacks.grad_flow_every)
            extra.append(flow)
        trainer = _trainer(cfg, run_dir, task, extra)
    except Exception as err:
        # Only bad trainer settings fail here (accelerator=gpu without a GPU, an unknown
        # argument, ...): a new run's directory, made a moment ago, holds nothing yet, so it
        # goes rather than litter outputs/ (a resumed run's stays as it was, of course).
        if not run.resumed and lead:
            shutil.rmtree(run_dir)
        if isinstance(err, UserError):
            raise
        raise UserError(f"Bad trainer setting: {type(err).__name__}: {err}") from None
    summary: dict[str, Any] = {
        "status": "running",
        "choices": choices,
        "params": count_parameters(task.model),
        "versions": versions(),
        **({"resumed_from": ckpt_path} if ckpt_path else {}),
    }
    if run.resumed:
        run.summary = summary  # written when training starts (_RunFiles.on_train_start)
    else:
        run.start(summary)
    sigint = signal.getsignal(signal.SIGINT)
    # Lightning's DDP launcher starts the other processes by running this command again: they
    # must find this run directory rather than make their own.
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())

    start = time.perf_counter()
    try:
        with _plain_cuda_probe(trainer), lightning_fixes.applied(trainer):
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
        # The first process writes the checkpoints as its fit ends (DeferredCheckpointIO): the
        # others wait for them before they look for best.ckpt and load it.
        trainer.strategy.barrier("nnlab checkpoints written")
        summary["fit_time_s"] = earlier["fit_time_s"] + time.perf_counter() - start
        summary["epochs"] = trainer.current_epoch
        summary.update(_prefixed(trainer.callback_metrics, "train/"))
        if flow is not None and flow.summary:
            # [layer, last epoch's mean norm] pairs: metrics.json sorts keys, and the layer
            # order (input to output) is the point
            summary["grad_norms"] = [[name, norm] for name, norm in flow.summary.items()]
            summary["grad_ratio_first_last"] = flow.ratios[-1]
            summary["warnings"] = sorted(flow.warned)
        if trainer.interrupted:
            summary["status"] = "interrupted"
            return Result(run_dir, summary)
        if getattr(task, "diverged_at", None):
            raise FloatingPointError(
                f"training diverged: the training loss became NaN or infinite in epoch "
                f"{task.diverged_at}, so training stopped ({runs.CHECKPOINTS}/{runs.LAST} keeps "
                f"the last state). Lower optimizer.lr, clip gradients "
                f"(trainer.gradient_clip_val=1.0), or add norm=batch."
            )
        chosen = runs.BEST if (run_dir / runs.CHECKPOINTS / runs.BEST).exists() else runs.LAST
        summary["checkpoint"] = f"{runs.CHECKPOINTS}/{chosen}"
        best = str(run_dir / runs.CHECKPOINTS / chosen)
        # Re-validating the best checkpoint must not add a stray point to the val curves.
        loggers, trainer.loggers = trainer.loggers, []
        val = trainer.validate(task, datamodule=datamodule, ckpt_path=best, verbose=False)
        if cfg.eval_train and isinstance(task, SupervisedTask):
            summary.update(_score_training_split(trainer, task, datamodule, best))
        trainer.loggers = loggers
        test = trainer.test(task, datamodule=datamodule, ckpt_path=best, verbose=False)
        if val:  # none with trainer.limit_val_batches=0
            summary.update(_prefixed(val[0], "val/"))
        summary.update(_prefixed(test[0], "test/"))
        if lead:
            _save_samples(task, run_dir)
    except UserError:
        raise
    except Exception as err:
        if stop.received:  # a peer of a distributed run stopped first (see StopSignals)
            summary["status"] = "interrupted"
            raise RunInterrupted(run_dir, trainer.current_epoch) from None
        summary.update(status="failed", error=f"{type(err).__name__}: {err}")
        problem = storage_failure(err)
        if problem is not None:  # no error.log: the disk that refused would refuse it too
            raise TrainingError(
                f"{problem}. Free some space or give a writable output_dir=, then continue with "
                f"nnlab train --resume {run_dir}: its {runs.CHECKPOINTS}/{runs.LAST} (written "
                f"at each epoch's end, and replaced only by a whole new one) is the last epoch "
                f"saved.",
                run_dir,
            ) from err
        import traceback

        if lead and run.started:
            with runs.written_whole(run_dir / "error.log") as log:
                log.write_text(traceback.format_exc())
        raise TrainingError(f"{type(err).__name__}: {err}", run_dir) from err
    except BaseException as err:
        # Ctrl-C and SIGTERM (Lightning turns both into SystemExit): not a failure.
        summary["status"] = "interrupted"
        if isinstance(err, KeyboardInterrupt | SystemExit):
            raise RunInterrupted(run_dir, trainer.current_epoch) from None
        raise
    finally:
        summary["wall_time_s"] = earlier["wall_time_s"] + time.perf_counter() - start
        # On a full disk this write fails as well: metrics.json keeps its last whole version,
        # and the error that stopped the run is the one reported.
        with contextlib.suppress(OSError):
            run.record(summary)
        if lead:
            os.environ.pop(RUN_DIR_ENV, None)
        # Lightning ignores further Ctrl-C while it shuts down and never restores the handler.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
    summary["status"] = "finished"
    run.record(summary)
    if trainer.logger and lead:
        # Lightning writes these metrics as scalars at step 0: under their own tags, so they
        # do not add a stray point to the start of every training curve.
        metrics = {f"final/{k}": v for k, v in summary.items() if "/" in k}
        # Lightning wrote an empty hparams.yaml at fit start and never rewrites an existing one.
        (run_dir / runs.TB / "hparams.yaml").unlink(missing_ok=True)
        trainer.logger.log_hyperparams(resolved, metrics=metrics)
        trainer.logger.finalize("success")
    return Result(run_dir, summary)


@contextlib.contextmanager
def _plain_cuda_probe(trainer: pl.Trainer) -> Iterator[None]:
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


def _score_training_split(
    trainer: pl.Trainer, task: pl.LightningModule, datamodule: TensorDataModule, ckpt: str
) -> dict[str, Any]:
    """The checkpoint's metrics on its own training data, in eval mode (no dropout), as
    `trainset/...`: the honest train side of a train-test gap."""
    loader = TensorBatches(datamodule.splits["train"], datamodule.batch_size)
    scores = trainer.test(task, dataloaders=loader, ckpt_path=ckpt, verbose=False)[0]
    return {k.replace("test/", "trainset/", 1): v for k, v in _prefixed(scores, "test/").items()}


def _new_run_dir(root: Path, name: str) -> Path:
    try:
        return runs.create_run_dir(root, name)
    except OSError as err:
        raise UserError(
            f"Cannot create a run directory in {root}: {err.strerror or err}. Make it writable "
            f"(and check the disk has room), or write runs elsewhere with output_dir=/some/path."
        ) from None


def evaluate(target: str, overrides: list[str], output_dir: str = "outputs") -> Result:
    """Test a trained model: rebuild it from its run's saved config and load the checkpoint."""
    _quiet_lightning()
    from nnlab.restore import saved_run

    run_dir, ckpt, checkpoint, cfg = saved_run(target, overrides, output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, task = build(cfg)
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        logger=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        callbacks=_progress_bar(cfg, task),
    )
    start = time.perf_counter()
    # The checkpoint is already in memory (it may carry the config): load it once, here.
    try:
        task.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise UserError(
            f"{ckpt} does not fit the model its config builds ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). Give a checkpoint written by nnlab train for this run, "
            f"and do not override model settings when evaluating it."
        ) from None
    test = trainer.test(task, datamodule=datamodule, verbose=False)
    metrics: dict[str, Any] = _prefixed(test[0], "test/")
    out_dir = run_dir if run_dir is not None else ckpt.parent
    _save_samples(task, out_dir)
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
