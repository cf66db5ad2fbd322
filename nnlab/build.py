"""config -> (datamodule, task): the only place a config meets the builders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nnlab.choices import GAN_TASK_OPTIONS, RUN_OPTIONS
from nnlab.errors import UserError, did_you_mean
from nnlab.models.cnn import BUILDER as CNN
from nnlab.models.detection import BUILDER as DETECTOR
from nnlab.models.gan import GAN
from nnlab.models.rnn import BUILDER as RNN
from nnlab.models.rnn import RecurrentNet
from nnlab.reference import reference_judge
from nnlab.scratch.modules import HandWritten
from nnlab.scratch.optim import scratch_optimizer
from nnlab.tasks.classification import ClassificationTask, classification_loss
from nnlab.tasks.detection import DetectionTask
from nnlab.tasks.gan import GanTask
from nnlab.tasks.optim import Schedule, lr_schedule
from nnlab.tasks.sequence import RegressionTask
from nnlab.tasks.supervised import SupervisedTask

Factory = Callable[..., torch.optim.Optimizer]


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


def build(
    cfg: DictConfig, fitted: dict[str, Any] | None = None
) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The datamodule (set up) and the task, both ready to train; raises UserError on bad input.

    `fitted` is what a trained run learned from its training data (its preprocessing.json):
    given, the data is scaled and encoded by it rather than by statistics learned again.

    model=gan gets a GanTask and model=faster_rcnn a DetectionTask (which needs detection data);
    otherwise the data decides: class labels get a ClassificationTask, real-valued targets a
    RegressionTask.
    """
    datamodule = _instantiate(cfg.data)
    _set_up(datamodule, fitted)
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    detector = spec.get("_target_") == DETECTOR
    _check_detection_pairing(detector, datamodule)
    # A GAN's task settings (objective, lr_g, ...) sit in its model config, beside the nets'.
    options = {key: spec.pop(key) for key in GAN_TASK_OPTIONS if key in spec}
    model = _model(spec, datamodule)
    optimizer = _optimizer(cfg.optimizer, model, datamodule)
    schedule = lr_schedule(**OmegaConf.to_container(cfg.scheduler, resolve=True))
    if detector:
        return datamodule, DetectionTask(model, optimizer, schedule, datamodule.class_names)
    if isinstance(model, GAN):
        return datamodule, _gan_task(cfg, datamodule, model, optimizer, schedule, options)
    return datamodule, _supervised_task(cfg, datamodule, model, optimizer, schedule)


def check_monitor(cfg: DictConfig, task: pl.LightningModule) -> None:
    """callbacks.monitor must be a metric this task records: Lightning would only say so at the
    end of the first epoch, after a full epoch of training."""
    monitor = cfg.callbacks.get("monitor")
    if monitor and hasattr(task, "metric_names"):
        names = task.metric_names()
        if monitor not in names:
            raise UserError(
                f"callbacks.monitor={monitor} is not a metric this run records. "
                f"{type(task).__name__} records: {', '.join(names)}."
                + f" callbacks.monitor=null picks the task's own, {task.monitor[0]}."
                + did_you_mean(monitor, names)
            )


def build_network(
    cfg: DictConfig, fitted: dict[str, Any] | None = None
) -> tuple[pl.LightningDataModule, torch.nn.Module]:
    """The datamodule (set up) and the bare network the config describes, without a task: no
    optimizer, no GAN judge (which may train a classifier first). What predict needs."""
    datamodule = _instantiate(cfg.data)
    _set_up(datamodule, fitted)
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    for key in GAN_TASK_OPTIONS:
        spec.pop(key, None)
    return datamodule, _model(spec, datamodule)


def _set_up(datamodule: pl.LightningDataModule, fitted: dict[str, Any] | None) -> None:
    """Load the data, scaled by `fitted` when given; a stored preprocessing that does not fit
    the data (hand-edited, or from another dataset) is a UserError, not a traceback."""
    if not fitted or not hasattr(datamodule, "restore"):
        datamodule.setup("fit")
        return
    datamodule.restore(fitted)
    try:
        datamodule.setup("fit")
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as err:
        raise UserError(
            f"The run's saved preprocessing (what its data learned in training: "
            f"{', '.join(sorted(fitted))}) does not fit the data now configured "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else err!r}). "
            f"Evaluate the run on data shaped as in training, and do not edit its "
            f"preprocessing.json; to learn the scaling from new data, train a new run."
        ) from None


def _model(spec: dict[str, Any], datamodule: pl.LightningDataModule) -> torch.nn.Module:
    """The network the model config describes, sized by the data."""
    # how to run the network, not what it is: applied to whatever the builder returns
    speed = {key: spec.pop(key) for key in RUN_OPTIONS if key in spec}
    if getattr(datamodule, "signal", False) and spec.get("_target_") in (CNN, RNN):
        spec["signal"] = True  # 2-D samples are (channels, length) signals (data=arrays)
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
    return model


def _optimizer(
    node: DictConfig, model: torch.nn.Module, datamodule: pl.LightningDataModule
) -> Factory:
    """The optimizer factory (params → optimizer): torch's, or its hand-written counterpart for
    model.engine=scratch."""
    optimizer = _instantiate(node, _convert_="all")  # plain betas, no omegaconf
    if not isinstance(model, HandWritten):
        return optimizer
    if datamodule.kind == "regression":
        raise UserError(
            "model.engine=scratch trains classifiers (cross_entropy or mse on class labels); "
            "this dataset has real-valued targets. Use model.engine=autograd."
        )
    return scratch_optimizer(optimizer)


def _gan_task(
    cfg: DictConfig,
    datamodule: pl.LightningDataModule,
    model: GAN,
    optimizer: Factory,
    schedule: Schedule,
    options: dict[str, Any],
) -> GanTask:
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
    return GanTask(model, optimizer, schedule, data_range, judge, **options)


def _supervised_task(
    cfg: DictConfig,
    datamodule: pl.LightningDataModule,
    model: torch.nn.Module,
    optimizer: Factory,
    schedule: Schedule,
) -> SupervisedTask:
    if datamodule.kind == "regression":
        task: SupervisedTask = RegressionTask(model, optimizer, schedule)
    else:
        task = ClassificationTask(
            model,
            optimizer,
            schedule,
            num_classes=datamodule.num_classes,
            loss=cfg.loss,
            class_names=datamodule.class_names,
            # the hand-written network brings its hand-written cost (BP1) along
            cost=model.cost if isinstance(model, HandWritten) else classification_loss,
        )
    # The task steps the optimizer itself, several batches per Lightning step (see _trainer).
    datamodule.steps_per_execution = cfg.trainer.steps_per_execution
    datamodule.limits = {s: cfg.trainer[f"limit_{s}_batches"] for s in ("train", "val", "test")}
    task.gradient_clip = (cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm)
    return task
