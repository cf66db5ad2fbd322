"""Faster R-CNN speed on the CPU: training images/s and inference ms/image.

Training is timed twice on the same model and batches: a hand-written PyTorch loop, and nnlab's
DetectionTask inside a Lightning Trainer (so Lightning's overhead shows). Inference runs the
model in eval mode over validation images, one at a time and eight at a time.
A script, not a test: pytest never collects bench_*.py.

    python tests/perf/bench_detection.py              # model=faster_rcnn data=shapes defaults
    python tests/perf/bench_detection.py --run latest         # inference of a trained run too
    python tests/perf/bench_detection.py --steps 20 model.backbone=resnet18
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import pytorch_lightning as pl
import torch

from nnlab.build import build
from nnlab.config import compose_config


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def setup(overrides: list[str]) -> tuple[pl.LightningDataModule, pl.LightningModule, int]:
    cfg, _ = compose_config(["model=faster_rcnn", "data=shapes", *overrides])
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build(cfg)
    return datamodule, task, cfg.data.batch_size


def hand_loop(overrides: list[str], steps: int, warmup: int) -> float:
    """Training images/s of a plain loop: forward with targets, backward, Adam step."""
    datamodule, task, _ = setup(overrides)
    model = task.model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(datamodule.train_dataloader())
    images_done, start = 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start, images_done = time.perf_counter(), 0
        images, targets = next(batches)
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        images_done += len(targets)
    return images_done / (time.perf_counter() - start)


class Clock(pl.Callback):
    """Times training batches after the first `warmup`."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
            self.end = time.perf_counter()


def lightning_loop(overrides: list[str], steps: int, warmup: int) -> float:
    """Training images/s of nnlab's DetectionTask in a Trainer (no validation, no logger)."""
    datamodule, task, _ = setup(overrides)
    clock = Clock(warmup)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(task, datamodule=datamodule)
    return clock.images / (clock.end - clock.start)


def inference(overrides: list[str], images: int, batch: int, run: str | None) -> float:
    """Milliseconds per image in eval mode, `batch` images per call; with `run`, that trained
    model (an untrained one keeps up to 100 low-score boxes per image, a trained one few)."""
    datamodule, task, _ = setup(overrides)
    model = task.model.eval()
    if run:
        from nnlab.predict import load_detector
        from nnlab.restore import saved_run

        model = load_detector(*saved_run(run, []))[0]
    x = datamodule.splits["val"][0][:images].float() / 255
    with torch.no_grad():
        model(x[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
    return 1000 * (time.perf_counter() - start) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed training batches")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--images", type=int, default=64, help="validation images to infer")
    parser.add_argument("--run", help="time inference of this trained run (default: untrained)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=4")
    args = parser.parse_args()
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, overrides: "
          f"{' '.join(args.overrides) or '(defaults)'}")  # fmt: skip
    hand = hand_loop(args.overrides, args.steps, args.warmup)
    print(f"training, hand-written loop : {hand:6.1f} images/s")
    nnlab = lightning_loop(args.overrides, args.steps, args.warmup)
    print(
        f"training, nnlab DetectionTask: {nnlab:6.1f} images/s ({nnlab / hand:.2f}× the hand loop)"
    )
    for batch in (1, 8):
        ms = inference(args.overrides, args.images, batch, args.run)
        print(f"inference, batch {batch}        : {ms:6.1f} ms/image ({args.run or 'untrained'})")


if __name__ == "__main__":
    main()
