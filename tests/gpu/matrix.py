"""The GPU paths the script runs, and how a dry run turns each into a CPU run.

Every path is a plain `nnlab train` command line. On a GPU it runs as written (plus
trainer.accelerator=gpu, so a path can never pass by quietly training on the CPU); with
--dry-run the same matrix runs on the CPU a couple of steps each, to exercise the script:
- trainer.accelerator=cpu (DDP then runs one gloo process);
- 16-mixed becomes 32-true: the CPU has no fp16 autocast (nnlab would train bf16-mixed instead,
  which the bf16 paths already cover). bf16-mixed stays: CPU autocast supports it;
- model.compile=true is dropped (the row says so): Inductor's CPU build of one small model takes
  15-25 s on 2 busy cores, the rest of the dry run ~50 s. --cpu-compile keeps it, so the same
  paths also compile on the CPU (a slow test does);
- 2 batches per epoch (training, validation and test), tiny shapes images, 100 GAN samples.
"""

from __future__ import annotations

from dataclasses import dataclass

EPOCHS = 3  # the least that leaves one steady epoch after the two the clocks skip
COMPARED_EPOCHS = 20  # the paths clocked against the hand-written loop (bench_overhead's default)
GPU = "trainer=gpu"  # bf16-mixed on one GPU
FP16 = "trainer.precision=16-mixed"
COMPILE = "model.compile=true"
DDP_ONE = ("trainer=ddp", "trainer.devices=1")
DETECTION = ("model=faster_rcnn",)  # data=shapes, 128×128 images, cnn backbone
# On a GPU: the detector's 2,000-image epoch cut to 25 steps, its evaluation to 5 batches.
DETECTION_GPU_LIMITS = (
    "trainer.limit_train_batches=25",
    "trainer.limit_val_batches=5",
    "trainer.limit_test_batches=5",
)
DRY_BATCHES = 2
DRY_LIMITS = tuple(
    f"trainer.limit_{split}_batches={DRY_BATCHES}" for split in ("train", "val", "test")
)
DRY_DATA = {
    "faster_rcnn": (
        "data.image_size=64",
        "data.max_object_size=24",
        "data.train_images=16",
        "data.val_images=8",
        "data.test_images=8",
        "model.min_size=64",
        "model.max_size=64",
    ),
    "gan": ("model.samples=100",),
}


@dataclass(frozen=True)
class GpuPath:
    """One line of the table: a name, what it proves, and its `nnlab train` overrides."""

    name: str
    covers: str
    overrides: tuple[str, ...]
    epochs: int = EPOCHS
    hand: str | None = None  # model clocked against a hand-written loop on the same device
    gpu_limits: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        for item in self.overrides:
            if item.startswith("model="):
                return item.split("=", 1)[1]
        return "mlp"


PATHS = (
    GpuPath(
        "mlp",
        "trainer=gpu (bf16-mixed), digits on the GPU whole",
        ("model=mlp", GPU),
        COMPARED_EPOCHS,
        hand="mlp",
    ),
    GpuPath("mlp_fp16", "16-mixed (GradScaler)", ("model=mlp", GPU, FP16)),
    GpuPath("mlp_compile", COMPILE, ("model=mlp", GPU, COMPILE)),
    GpuPath(
        "cnn",
        "trainer=gpu (bf16-mixed), digits on the GPU whole",
        ("model=cnn", GPU),
        COMPARED_EPOCHS,
        hand="cnn",
    ),
    GpuPath("cnn_fp16", "16-mixed", ("model=cnn", GPU, FP16)),
    GpuPath(
        "cnn_channels_last",
        "model.channels_last=true",
        ("model=cnn", GPU, "model.channels_last=true"),
    ),
    GpuPath(
        "cnn_all_speed",
        "16-mixed + channels_last + compile (docs/scaling.md's line)",
        ("model=cnn", GPU, FP16, "model.channels_last=true", COMPILE),
    ),
    GpuPath(
        "rnn",
        "LSTM (cuDNN), bf16-mixed, sequences on the GPU whole",
        ("model=rnn", "data=digits_seq", GPU),
    ),
    GpuPath("rnn_fp16", "LSTM, 16-mixed", ("model=rnn", "data=digits_seq", GPU, FP16)),
    GpuPath(
        "rnn_compile",
        "LSTM, model.compile=true",
        ("model=rnn", "data=digits_seq", GPU, COMPILE),
    ),
    GpuPath("gan", "GAN (mlp), two optimizers, bf16-mixed, sample judge", ("model=gan", GPU)),
    GpuPath(
        "gan_dcgan_fp16",
        "GAN (dcgan), manual optimization under 16-mixed",
        ("model=gan", "model.arch=dcgan", GPU, FP16),
    ),
    GpuPath(
        "detection",
        "Faster R-CNN on shapes, bf16-mixed, batches moved per step",
        (*DETECTION, GPU),
        gpu_limits=DETECTION_GPU_LIMITS,
    ),
    GpuPath(
        "detection_fp16",
        "Faster R-CNN, 16-mixed",
        (*DETECTION, GPU, FP16),
        gpu_limits=DETECTION_GPU_LIMITS,
    ),
    GpuPath("ddp_mlp", "trainer=ddp on one GPU (NCCL), 32-true", ("model=mlp", *DDP_ONE)),
    GpuPath(
        "ddp_cnn_bf16",
        "trainer=ddp on one GPU, bf16-mixed",
        ("model=cnn", *DDP_ONE, "trainer.precision=bf16-mixed"),
    ),
)


def epochs(path: GpuPath, dry_run: bool) -> int:
    """Epochs the path trains (and its hand-written loop too): a dry run only checks the script."""
    return EPOCHS if dry_run else path.epochs


def hand_batch_limit(dry_run: bool) -> int | None:
    """Batches per epoch the hand-written loop trains and validates: as many as nnlab's run."""
    return DRY_BATCHES if dry_run else None


def compile_dropped(path: GpuPath, dry_run: bool, cpu_compile: bool) -> bool:
    return dry_run and not cpu_compile and COMPILE in path.overrides


def dry_run_changes(path: GpuPath, dry_run: bool, cpu_compile: bool) -> str:
    """What the dry run changed in this path beyond the CPU and the limits, for its row."""
    changes = ["32-true for 16-mixed"] if dry_run and FP16 in path.overrides else []
    if compile_dropped(path, dry_run, cpu_compile):
        changes.append("compile dropped")
    return f" [dry run: {', '.join(changes)}]" if changes else ""


def command_line(path: GpuPath, dry_run: bool, cpu_compile: bool = False) -> list[str]:
    """The path's `nnlab train` overrides for this mode, the run named after the path."""
    common = [
        f"name={path.name}",
        f"trainer.max_epochs={epochs(path, dry_run)}",
        "trainer.enable_progress_bar=false",
    ]
    if not dry_run:
        return [*path.overrides, *path.gpu_limits, *common, "trainer.accelerator=gpu"]
    overrides = ["trainer.precision=32-true" if o == FP16 else o for o in path.overrides]
    if compile_dropped(path, dry_run, cpu_compile):
        overrides.remove(COMPILE)
    if path.model in DRY_DATA:
        overrides += DRY_DATA[path.model]
    return [*overrides, *DRY_LIMITS, *common, "trainer.accelerator=cpu"]


def expected_precision(path: GpuPath, dry_run: bool) -> str:
    """The trainer.precision the run's saved config must show."""
    for item in reversed(path.overrides):
        if item.startswith("trainer.precision="):
            precision = item.split("=", 1)[1]
            return "32-true" if dry_run and precision == "16-mixed" else precision
    return "bf16-mixed" if GPU in path.overrides else "32-true"
