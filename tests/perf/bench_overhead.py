"""Per-epoch training time on digits: nnlab vs a hand-written PyTorch loop vs stock Lightning.

A fourth variant, the lightning floor, runs the hand loop's code inside a bare LightningModule:
how much of the hand loop's budget Lightning's loop takes before nnlab adds anything. All
variants train the same nnlab-built model (same init seed) on the same train split with
Adam(lr=1e-3) and validate every epoch; each repeat runs them all, in a rotating order, so
machine noise hits them alike. Per-epoch time is steady-state, clocked inside each run: from
the start of epoch WARMUP_EPOCHS + 1 to the end of the last epoch (its validation, logging and
checkpointing included), over the epochs in between, so neither a fit's start-up
(bench_startup.py measures it) nor its teardown is spread over the epochs. A script, not a
test: pytest never collects bench_*.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from nnlab.build import build
from nnlab.config import compose_config
from nnlab.train import train

# nnlab / variant must be at most these: issue 7 in every cell (1.25× the hand loop, faster than
# stock Lightning), issue 2 for the MLP (0.6× stock).
TARGETS = {"hand": 1.25, "stock": 1.0}
MLP_STOCK_TARGET = 0.6
WARMUP_EPOCHS = 2
DATA = {"mlp": "digits", "cnn": "digits", "rnn": "digits_seq"}  # rnn: an LSTM over digit rows


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def setup(model: str, batch_size: int) -> tuple[nn.Module, dict[str, tuple[Tensor, Tensor]]]:
    """The nnlab-built model (seeded as nnlab's train() seeds it) and the digits splits."""
    cfg, _ = compose_config(
        [f"model={model}", f"data={DATA[model]}", f"data.batch_size={batch_size}"]
    )
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build(cfg)
    return task.model, datamodule.splits


def per_epoch_ms(marks: list[float]) -> float:
    """Steady-state ms per epoch from the epochs' start times and the fit's end time."""
    steady = marks[WARMUP_EPOCHS:]
    return (steady[-1] - steady[0]) / (len(steady) - 1) * 1000


class EpochClock(pl.Callback):
    """The start time of every training epoch, then the end of training: every epoch's
    validation, logging and checkpoints fall between two marks."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks.append(time.perf_counter())


@contextlib.contextmanager
def as_a_plain_script() -> Iterator[None]:
    """As a script that never imports Lightning or nnlab runs: without deterministic algorithms
    and without the variable Lightning sets on import (with it, torch asks NVML whether CUDA is
    there at every optimizer step; nnlab trains on the CPU without it too)."""
    torch.use_deterministic_algorithms(False)  # nnlab's trainer turns it on process-wide
    nvml_check = os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    try:
        yield
    finally:
        if nvml_check is not None:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = nvml_check


def run_hand(model_name: str, epochs: int, bs: int) -> float:
    """A hand-written loop: train, then validate, every epoch."""
    with as_a_plain_script():
        return per_epoch_ms(hand_loop(model_name, epochs, bs))


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple[Tensor, Tensor],
    bs: int,
    backward: Callable[[Tensor], None],
) -> None:
    """One epoch of the hand loop's training: shuffled batches, one optimizer step each."""
    model.train()
    x, y = data
    order = torch.randperm(len(x))
    xs, ys = x[order], y[order]
    for i in range(0, len(xs), bs):
        loss = F.cross_entropy(model(xs[i : i + bs]), ys[i : i + bs])
        opt.zero_grad()
        backward(loss)
        opt.step()


def validate(model: nn.Module, data: tuple[Tensor, Tensor], bs: int) -> tuple[float, float]:
    """The hand loop's validation: mean loss and accuracy, one host sync at the end."""
    model.eval()
    xv, yv = data
    with torch.no_grad():
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        for i in range(0, len(xv), bs):
            logits, target = model(xv[i : i + bs]), yv[i : i + bs]
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(dim=1) == target).sum()
    return loss_sum.item() / len(xv), correct.item() / len(xv)


def hand_loop(model_name: str, epochs: int, bs: int) -> list[float]:
    """The loop itself; returns each epoch's start time, then its end."""
    model, splits = setup(model_name, bs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    marks = []
    for _ in range(epochs):
        marks.append(time.perf_counter())
        train_epoch(model, opt, splits["train"], bs, Tensor.backward)
        validate(model, splits["val"], bs)
    marks.append(time.perf_counter())
    return marks


class FloorModule(pl.LightningModule):
    """The hand loop's own code as a LightningModule and nothing more: the whole epoch in one
    Lightning step (as nnlab groups batches), manual_backward and Lightning's optimizer wrapper,
    no logging, no checkpoints, no callback but the clock. What Lightning's loop costs alone,
    before any of the features nnlab adds."""

    def __init__(self, model: nn.Module, splits: dict[str, tuple[Tensor, Tensor]], bs: int):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.splits, self.bs = model, splits, bs

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        optimizer = self.optimizers()
        train_epoch(self.model, optimizer, self.splits["train"], self.bs, self.manual_backward)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        validate(self.model, self.splits["val"], self.bs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=1e-3)


def run_floor(model_name: str, epochs: int, bs: int) -> float:
    model, splits = setup(model_name, bs)
    one_step = DataLoader([0], batch_size=1)
    with tempfile.TemporaryDirectory() as tmp, as_a_plain_script():
        trainer, clock = clocked_trainer(epochs, tmp, logger=False, checkpoints=False)
        trainer.fit(FloorModule(model, splits, bs), one_step, one_step)
    return per_epoch_ms(clock.marks)


def clocked_trainer(
    epochs: int, tmp: str, logger: Any, checkpoints: bool
) -> tuple[pl.Trainer, EpochClock]:
    """A plain Lightning Trainer for the floor and stock scripts, with the epoch clock."""
    clock = EpochClock()
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=logger,
        default_root_dir=tmp,
        callbacks=[clock],
        enable_checkpointing=checkpoints,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return trainer, clock


class NullTTY(io.TextIOBase):
    """Swallows output but claims to be a terminal, so Rich's bar renders as for a user."""

    def write(self, text: str) -> int:
        return len(text)

    def isatty(self) -> bool:
        return True


def run_nnlab(model_name: str, epochs: int, bs: int, bar_tb: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"model={model_name}", f"data={DATA[model_name]}"]
        overrides += [f"trainer.max_epochs={epochs}"]
        plain = ["trainer.enable_progress_bar=false", "logger=none"]
        overrides += ([] if bar_tb else plain) + [f"data.batch_size={bs}", f"output_dir={tmp}"]
        cfg, choices = compose_config(overrides)
        clock = EpochClock()
        # The bar (Rich when installed, else tqdm) still renders; it just skips the screen.
        with contextlib.redirect_stdout(NullTTY()), contextlib.redirect_stderr(NullTTY()):
            train(cfg, choices, [], callbacks=[clock])
    return per_epoch_ms(clock.marks)


class StockModule(pl.LightningModule):
    """A LightningModule as most tutorials write it: self.log on every step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss)
        self.log("train/acc", (logits.argmax(dim=1) == y).float().mean())
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def run_stock(model_name: str, epochs: int, bs: int) -> float:
    model, splits = setup(model_name, bs)
    train_dl = DataLoader(TensorDataset(*splits["train"]), batch_size=bs, shuffle=True)
    val_dl = DataLoader(TensorDataset(*splits["val"]), batch_size=bs)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, clock = clocked_trainer(
            epochs, tmp, logger=TensorBoardLogger(tmp), checkpoints=True
        )
        trainer.fit(StockModule(model), train_dl, val_dl)
    return per_epoch_ms(clock.marks)


def measure(m: str, bs: int, epochs: int, repeats: int) -> dict[str, list[float]]:
    """Steady-state ms/epoch of every variant for one model and batch size, per repeat."""
    runners: dict[str, Callable[[int], float]] = {
        "hand": lambda e: run_hand(m, e, bs),
        "nnlab": lambda e: run_nnlab(m, e, bs, bar_tb=False),
        "nnlab (bar+tb)": lambda e: run_nnlab(m, e, bs, bar_tb=True),
        "stock": lambda e: run_stock(m, e, bs),
        "lightning floor": lambda e: run_floor(m, e, bs),
    }
    for run in runners.values():
        run(WARMUP_EPOCHS + 1)
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(runners[name](WARMUP_EPOCHS + epochs))
    print(f"{'variant':<16}{'ms/epoch':>10}   all repeats (ms/epoch)   [model={m} batch={bs}]")
    for name in names:
        line = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:<16}{statistics.median(times[name]):>10.2f}   {line}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64])
    parser.add_argument("--model", choices=sorted(DATA), nargs="+", default=["mlp"])
    parser.add_argument("--grid", action="store_true", help="mlp, cnn, rnn × batch 32 and 256")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    models, sizes = (sorted(DATA), [32, 256]) if args.grid else (args.model, args.batch_size)
    print(
        f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"lightning {pl.__version__}, load avg {os.getloadavg()[0]:.1f} | epochs={args.epochs} "
        f"repeats={args.repeats} (digits, Adam lr=1e-3, val every epoch)"
    )
    cells = {(m, bs): measure(m, bs, args.epochs, args.repeats) for m in models for bs in sizes}
    # Each repeat runs every variant back to back: its ratios share that moment's machine load.
    print(f"\n{'cell':<10}{'ratio':<30}{'median':>7}  {'repeats':<20}{'target':>8}")
    for (m, bs), times in cells.items():
        pairs: list[tuple[str, str, float | None]] = [("lightning floor", "hand", None)]
        for ours in ("nnlab", "nnlab (bar+tb)"):
            for base, target in TARGETS.items():
                if base == "stock" and m == "mlp":
                    target = min(target, MLP_STOCK_TARGET)
                pairs.append((ours, base, target))
        for ours, base, target in pairs:
            ratios = [a / b for a, b in zip(times[ours], times[base], strict=True)]
            ratio = statistics.median(ratios)
            verdict = "" if target is None else "PASS" if ratio <= target else "MISS"
            spread = " ".join(f"{r:.2f}" for r in ratios)
            bar = "" if target is None else f"<= {target}"
            print(
                f"{f'{m} b{bs}':<10}{f'{ours} / {base}':<30}{ratio:>7.2f}  {spread:<20}"
                f"{bar:>8}  {verdict}"
            )


if __name__ == "__main__":
    main()
