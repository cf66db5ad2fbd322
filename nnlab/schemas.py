"""Typed schemas for every config group choice: types and bounds that compose cannot check.

Each field may carry bounds (`gt`, `ge`, `lt`, `le`) or `choices` in its metadata; config.py
merges a composed node into its schema (type check) and then checks the bounds. `path=True` marks
a filesystem path: config.py expands a leading `~` and `$VAR` / `${VAR}` in its value, as bash
would (bash itself does not after `key=`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

from omegaconf import MISSING

from nnlab.choices import (
    ARRAY_LAYOUTS,
    BACKBONES,
    CELLS,
    CLIP_ALGORITHMS,
    ENGINES,
    GAN_ARCHS,
    GAN_OBJECTIVES,
    IN_MEMORY,
    LOGGERS,
    LOSSES,
    MONITOR_MODES,
    TABLE_MISSING,
    TABLE_TASKS,
)

MAX_SEED = 2**32 - 1  # numpy and scikit-learn take 32-bit seeds


def spec(**bounds: Any) -> Any:
    """A required schema field with optional bounds: gt, ge, lt, le, choices, and length or
    min_length for lists (whose items the other bounds then apply to); path=True for a path."""
    return field(default=MISSING, metadata=bounds)


@dataclass
class TrainSchema:
    seed: int = spec(ge=0, le=MAX_SEED)
    name: Optional[str] = None  # noqa: UP045
    tags: List[str] = field(default_factory=list)  # noqa: UP006
    loss: str = spec(choices=LOSSES)
    eval_train: bool = spec()
    output_dir: str = spec(path=True)


@dataclass
class LayersSchema:
    """Fields every network built from nnlab's shared layers has (norm and activation groups)."""

    _target_: str = spec()
    dropout: float = spec(ge=0.0, lt=1.0)
    norm: str = spec()
    norm_groups: int = spec(ge=1)
    activation: str = spec()
    compile: bool = spec()


@dataclass
class MLPSchema(LayersSchema):
    hidden: int = spec(ge=1)
    depth: int = spec(ge=0)
    residual: bool = spec()
    engine: str = spec(choices=ENGINES)


@dataclass
class CNNSchema(LayersSchema):
    channels: List[int] = spec(ge=1, min_length=1)  # noqa: UP006
    kernel_size: int = spec(ge=1)
    residual: bool = spec()
    fc_hidden: int = spec(ge=0)
    channels_last: bool = spec()
    engine: str = spec(choices=ENGINES)


@dataclass
class RNNSchema(LayersSchema):
    cell: str = spec(choices=CELLS)
    hidden: int = spec(ge=1)
    layers: int = spec(ge=1)
    bidirectional: bool = spec()
    engine: str = spec(choices=ENGINES)


@dataclass
class GANSchema:
    _target_: str = spec()
    arch: str = spec(choices=GAN_ARCHS)
    latent_dim: int = spec(ge=1)
    hidden: int = spec(ge=1)
    depth: int = spec(ge=1)
    channels: int = spec(ge=1)
    minibatch_std: bool = spec()
    norm: str = spec()
    activation: str = spec()
    d_activation: str = spec()
    objective: str = spec(choices=GAN_OBJECTIVES)
    lr_g: Optional[float] = spec(gt=0.0)  # noqa: UP045
    lr_d: Optional[float] = spec(gt=0.0)  # noqa: UP045
    label_smoothing: float = spec(ge=0.0, lt=1.0)
    ema: float = spec(ge=0.0, lt=1.0)
    samples: int = spec(ge=10)


@dataclass
class FasterRCNNSchema:
    _target_: str = spec()
    backbone: str = spec(choices=BACKBONES)
    channels: List[int] = spec(ge=1, min_length=1)  # noqa: UP006
    weights: Optional[str] = spec(path=True)  # noqa: UP045
    anchor_sizes: List[int] = spec()  # noqa: UP006
    aspect_ratios: List[float] = spec()  # noqa: UP006
    min_size: int = spec(ge=16)
    max_size: int = spec(ge=16)
    rpn_pre_nms_top_n_train: int = spec(ge=1)
    rpn_post_nms_top_n_train: int = spec(ge=1)
    rpn_pre_nms_top_n_test: int = spec(ge=1)
    rpn_post_nms_top_n_test: int = spec(ge=1)
    rpn_batch_size_per_image: int = spec(ge=2)
    box_batch_size_per_image: int = spec(ge=2)
    box_head_width: int = spec(ge=1)
    roi_sampling_ratio: int = spec(ge=0)
    box_score_thresh: float = spec(ge=0.0, lt=1.0)
    box_detections_per_img: int = spec(ge=1)
    norm: str = spec()
    norm_groups: int = spec(ge=1)
    activation: str = spec()


@dataclass
class SplitSchema:
    """Fields every in-memory datamodule shares."""

    _target_: str = spec()
    batch_size: int = spec(ge=1)
    val_fraction: float = spec(gt=0.0, lt=1.0)
    split_seed: int = spec(ge=0, le=MAX_SEED)
    seed: int = spec(ge=0)


@dataclass
class DigitsSchema(SplitSchema):
    test_fraction: float = spec(gt=0.0, lt=1.0)


@dataclass
class TabularSchema(DigitsSchema):
    dataset: str = spec()


@dataclass
class TableSchema(DigitsSchema):
    path: str = spec(path=True)
    target: str = spec()
    features: Optional[List[str]] = spec()  # noqa: UP006, UP045
    categorical: List[str] = spec()  # noqa: UP006
    sep: Optional[str] = spec()  # noqa: UP045
    missing: str = spec(choices=TABLE_MISSING)
    task: str = spec(choices=TABLE_TASKS)
    max_categories: int = spec(ge=2)
    val_path: Optional[str] = spec(path=True)  # noqa: UP045
    test_path: Optional[str] = spec(path=True)  # noqa: UP045


@dataclass
class ArraysSchema(DigitsSchema):
    path: str = spec(path=True)
    labels: Optional[str] = spec(path=True)  # noqa: UP045
    layout: str = spec(choices=ARRAY_LAYOUTS)
    task: str = spec(choices=TABLE_TASKS)
    in_memory: Any = spec(choices=IN_MEMORY)
    memory_limit_mb: Optional[int] = spec(ge=1)  # noqa: UP045
    workers: int = spec(ge=0)


@dataclass
class GeneratedSchema:
    _target_: str = spec()
    samples: int = spec(ge=10)
    batch_size: int = spec(ge=1)
    val_fraction: float = spec(gt=0.0, lt=1.0)
    test_fraction: float = spec(gt=0.0, lt=1.0)
    data_seed: int = spec(ge=0, le=MAX_SEED)
    seed: int = spec(ge=0)


@dataclass
class AddingSchema(GeneratedSchema):
    length: int = spec(ge=2)
    min_length: Optional[int] = spec(ge=2)  # noqa: UP045


@dataclass
class SineSchema(GeneratedSchema):
    window: int = spec(ge=1)
    horizon: int = spec(ge=1)
    noise: float = spec(ge=0.0)


@dataclass
class VisionSchema(SplitSchema):
    dataset: str = spec()
    root: str = spec(path=True)


@dataclass
class ImageFolderSchema(DigitsSchema):
    root: str = spec(path=True)
    image_size: int = spec(ge=4)
    grayscale: bool = spec()
    in_memory: Any = spec(choices=IN_MEMORY)
    memory_limit_mb: Optional[int] = spec(ge=1)  # noqa: UP045
    workers: int = spec(ge=0)
    skip_bad: bool = spec()


@dataclass
class ShapesSchema:
    _target_: str = spec()
    image_size: int = spec(ge=16)
    train_images: int = spec(ge=1)
    val_images: int = spec(ge=1)
    test_images: int = spec(ge=1)
    min_objects: int = spec(ge=1)
    max_objects: int = spec(ge=1)
    min_object_size: int = spec(ge=3)
    max_object_size: int = spec(ge=3)
    data_seed: int = spec(ge=0, le=MAX_SEED)
    batch_size: int = spec(ge=1)
    seed: int = spec(ge=0)


@dataclass
class CocoSchema:
    _target_: str = spec()
    root: str = spec(path=True)
    images: str = spec(path=True)
    annotations: str = spec(path=True)
    val_images: Optional[str] = spec(path=True)  # noqa: UP045
    val_annotations: Optional[str] = spec(path=True)  # noqa: UP045
    test_images: Optional[str] = spec(path=True)  # noqa: UP045
    test_annotations: Optional[str] = spec(path=True)  # noqa: UP045
    val_fraction: float = spec(gt=0.0, lt=1.0)
    test_fraction: float = spec(gt=0.0, lt=1.0)
    split_seed: int = spec(ge=0, le=MAX_SEED)
    workers: int = spec(ge=0)
    batch_size: int = spec(ge=1)
    seed: int = spec(ge=0)
    in_memory: Any = spec(choices=IN_MEMORY)
    memory_limit_mb: Optional[int] = spec(ge=1)  # noqa: UP045


@dataclass
class OptimizerSchema:
    _target_: str = spec()
    _partial_: bool = True
    lr: float = spec(gt=0.0)
    weight_decay: float = spec(ge=0.0)


@dataclass
class MomentumSchema(OptimizerSchema):
    momentum: float = spec(ge=0.0, lt=1.0)
    nesterov: bool = spec()


@dataclass
class AdamSchema(OptimizerSchema):
    betas: List[float] = spec(ge=0.0, lt=1.0, length=2)  # noqa: UP006
    eps: float = spec(gt=0.0)


@dataclass
class RMSpropSchema(OptimizerSchema):
    alpha: float = spec(gt=0.0, lt=1.0)
    eps: float = spec(gt=0.0)
    momentum: float = spec(ge=0.0, lt=1.0)


@dataclass
class NormSchema:
    kind: str = spec()
    groups: int = spec(ge=1)


@dataclass
class ActivationSchema:
    kind: str = spec()


@dataclass
class SchedulerSchema:
    name: str = spec()


@dataclass
class StepSchema(SchedulerSchema):
    step_size: int = spec(ge=1)
    gamma: float = spec(gt=0.0)


@dataclass
class CosineSchema(SchedulerSchema):
    eta_min: float = spec(ge=0.0)


@dataclass
class OneCycleSchema(SchedulerSchema):
    max_lr: float = spec(gt=0.0)
    pct_start: float = spec(gt=0.0, lt=1.0)


@dataclass
class TrainerSchema:
    max_epochs: int = spec(ge=1)
    max_time: Optional[str] = spec()  # noqa: UP045
    accelerator: str = spec()
    devices: Any = spec()
    strategy: str = spec()
    num_nodes: int = spec(ge=1)
    precision: Any = spec()
    gradient_clip_val: Optional[float] = spec(ge=0.0)  # noqa: UP045
    gradient_clip_algorithm: str = spec(choices=CLIP_ALGORITHMS)
    deterministic: Any = spec()
    check_val_every_n_epoch: int = spec(ge=1)
    # int = a number of batches, float = a fraction: Lightning reads the type, so keep it.
    limit_train_batches: Any = spec(gt=0)
    limit_val_batches: Any = spec(ge=0)
    limit_test_batches: Any = spec(gt=0)
    steps_per_execution: int = spec(ge=1)
    enable_progress_bar: bool = spec()
    log_every_n_steps: int = spec(ge=1)


@dataclass
class LoggerSchema:
    kind: str = spec(choices=LOGGERS)


@dataclass
class CallbacksSchema:
    monitor: Optional[str] = spec()  # noqa: UP045
    mode: Optional[str] = spec(choices=MONITOR_MODES)  # noqa: UP045
    checkpoint_interval_s: float = spec(ge=0.0)
    early_stopping_patience: int = spec(ge=0)
    grad_flow: bool = spec()
    grad_flow_every: int = spec(ge=1)


# group → choice → schema. "*" applies to any choice of the group (including user-added ones).
SCHEMAS: dict[str, dict[str, type]] = {
    "model": {
        "mlp": MLPSchema,
        "cnn": CNNSchema,
        "rnn": RNNSchema,
        "gan": GANSchema,
        "faster_rcnn": FasterRCNNSchema,
        "faster_rcnn_coco": FasterRCNNSchema,
    },
    "data": {
        "digits": DigitsSchema,
        "digits_seq": DigitsSchema,
        "adding": AddingSchema,
        "sine": SineSchema,
        "iris": TabularSchema,
        "wine": TabularSchema,
        "breast_cancer": TabularSchema,
        "table": TableSchema,
        "arrays": ArraysSchema,
        "mnist": VisionSchema,
        "fashion_mnist": VisionSchema,
        "cifar10": VisionSchema,
        "image_folder": ImageFolderSchema,
        "shapes": ShapesSchema,
        "coco": CocoSchema,
    },
    "optimizer": {
        "sgd": OptimizerSchema,
        "momentum": MomentumSchema,
        "adam": AdamSchema,
        "adamw": AdamSchema,
        "rmsprop": RMSpropSchema,
    },
    "norm": {"*": NormSchema},
    "activation": {"*": ActivationSchema},
    "scheduler": {
        "none": SchedulerSchema,
        "step": StepSchema,
        "cosine": CosineSchema,
        "onecycle": OneCycleSchema,
    },
    "trainer": {"*": TrainerSchema},
    "logger": {"*": LoggerSchema},
    "callbacks": {"*": CallbacksSchema},
}


def missing_sections(config: dict[str, Any]) -> list[str]:
    """The groups a whole saved config has and `config` lacks (as mappings): a file cut short."""
    return [group for group in SCHEMAS if not isinstance(config.get(group), dict)]


def split_error(data: dict[str, Any]) -> str | None:
    """What is wrong with a data config's split fractions taken together (each alone is within
    its bounds), or None: the validation and test parts must leave samples to train on."""
    parts = {
        key: data[key]
        for key, path in (("val_fraction", "val_path"), ("test_fraction", "test_path"))
        if isinstance(data.get(key), (int, float)) and not data.get(path)
    }
    if len(parts) < 2 or sum(parts.values()) < 1.0:
        return None
    shown = " + ".join(f"data.{key}={value:g}" for key, value in parts.items())
    return (
        f"{shown} leaves no samples to train on: the validation and test parts together must "
        f"be under 1 (the defaults are 0.15 each; for example data.val_fraction=0.2 "
        f"data.test_fraction=0.2 trains on the other 60%)."
    )
