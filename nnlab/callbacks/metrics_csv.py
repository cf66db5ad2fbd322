"""metrics.csv: one row per training epoch, written as the run goes."""

from __future__ import annotations

import csv
import io
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from nnlab.errors import Notice
from nnlab.runs import written_whole

FIRST = ("epoch", "step", "time_s", "lr")  # the columns before the metrics


class MetricsCsv(pl.Callback):
    """Writes `path` (a run's metrics.csv) with one row per epoch: the epoch (from 1), the
    optimizer step and the training time in seconds at its end, the learning rate it used, and
    every train/ and val/ metric the task logged for it; a metric the epoch did not log (no
    validation that epoch) is left empty.

    The task logs its training metrics in its own on_train_epoch_end, which Lightning calls
    after the callbacks' one, so a row is written when the next epoch starts, or training ends,
    by the first process only. A row is appended (one write of one line); the file is rewritten
    whole when a column is new (a GAN's first validation) and on a resumed run's first epoch,
    which keeps the rows of the epochs its checkpoint holds and drops later ones: those epochs
    are trained again. Rewriting every epoch would cost a long run of short epochs more and
    more: 25 ms at the 1,000th, against 0.01 ms for an append.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None  # the epoch that ended, its metrics to come
        self._val: dict[str, float] = {}  # the last validation's metrics during fit
        self._clock = (0.0, 0.0)  # (time_s already trained before this session, its start)
        self._columns: dict[str, None] = dict.fromkeys(FIRST)  # every row's keys, in order
        self._on_disk: list[str] = []  # the file's columns, [] until this session writes it

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has restored a resumed run's checkpoint by now: current_epoch is the number
        # of epochs it holds.
        self.rows = self._earlier_rows(trainer.current_epoch) if trainer.is_global_zero else []
        self._clock = (_seconds(self.rows[-1]) if self.rows else 0.0, time.perf_counter())
        for row in self.rows:
            self._columns.update(dict.fromkeys(row))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._val = _metrics(trainer.callback_metrics, "val/")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done, start = self._clock
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        self._pending = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "time_s": round(done + time.perf_counter() - start, 3),
            "lr": lr,
        }

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_pending(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_pending(trainer)

    def _write_pending(self, trainer: pl.Trainer) -> None:
        row, self._pending = self._pending, None
        if row is None:
            return
        metrics = _metrics(trainer.callback_metrics, "train/")
        # The lr the task noted as the epoch began; an epoch's schedule may step within it.
        lr = metrics.pop("train/lr", row["lr"])
        row.update(lr=lr, **metrics, **self._val)
        self._val = {}
        if trainer.is_global_zero:
            self.rows.append(row)
            self._write()

    def _write(self) -> None:
        self._columns.update(dict.fromkeys(self.rows[-1]))
        metrics = [k for k in self._columns if k not in FIRST]
        columns = [*FIRST, *sorted(metrics, key=lambda k: (not k.startswith("train/"), k))]
        if columns == self._on_disk:
            with self.path.open("a", newline="") as handle:
                handle.write(_lines(columns, self.rows[-1:]))
            return
        header = {column: column for column in columns}
        with written_whole(self.path) as partial:
            partial.write_text(_lines(columns, [header, *self.rows]))
        self._on_disk = columns

    def _earlier_rows(self, epochs_done: int) -> list[dict[str, Any]]:
        """The rows of an earlier session up to `epochs_done` (none for a new run)."""
        if epochs_done == 0 or not self.path.exists():
            return []
        try:
            with self.path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            kept = [r for r in rows if int(float(r["epoch"])) <= epochs_done]
        except (OSError, ValueError, KeyError, TypeError, csv.Error) as err:
            warnings.warn(
                f"{self.path} cannot be read ({type(err).__name__}: {err}), so it starts again "
                f"from epoch {epochs_done + 1}: earlier epochs' rows are lost.",
                Notice,
                stacklevel=2,
            )
            return []
        # DictReader puts the cells of a row longer than the header under the key None
        return [{k: v for k, v in row.items() if isinstance(k, str)} for row in kept]


def _metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _seconds(row: dict[str, Any]) -> float:
    try:
        return float(row.get("time_s") or 0.0)
    except ValueError:  # a damaged cell: the clock restarts rather than the run failing
        return 0.0


def _lines(columns: list[str], rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return text.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.7g}" if isinstance(value, float) else value
