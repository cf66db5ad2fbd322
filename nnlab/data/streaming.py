"""Samples read from disk batch by batch, for datasets too large to hold in memory.

A `Source` says how to read one sample (a uint8 array) by index. `BatchReader` reads a whole
batch of indices at a time, in a DataLoader worker: the batch stays uint8 (4× less to pass
between processes) until the main process turns it into float and scales it, whole, by the
training split's statistics. `StreamBatches` cuts the indices exactly as an in-memory
TensorBatches cuts its tensors (same shuffle per seed and epoch, same sharding, limits and
grouping), so streaming a dataset trains on the batches holding it in memory would give.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nnlab.data.base import TensorBatches
from nnlab.errors import Notice, UserError, choice_error

STATS_SAMPLE = 10_000  # training samples the scaling statistics are measured on, at most
GROUP_BYTES = 32 << 20  # float bytes of decoded batches one Lightning step may hold at once
MEMORY_CAP = 2 << 30  # in_memory=auto holds at most this much (and a quarter of free memory)
CHUNK = 256  # samples per read while loading into memory or measuring statistics


class Source(Protocol):
    """Samples on disk: `read(i)` gives sample i as a uint8 array of `shape` (UserError naming
    the file when it cannot), `name(i)` names it, `labels` holds every target."""

    shape: tuple[int, ...]
    labels: torch.Tensor

    def __len__(self) -> int: ...

    def read(self, index: int) -> np.ndarray: ...

    def name(self, index: int) -> str: ...


@dataclass
class Decoded:
    """One batch as a worker hands it back: the samples it could read (uint8) and their
    targets, those it skipped (name, reason), or the refusal that stops the run."""

    x: torch.Tensor
    y: torch.Tensor
    index: list[int]  # the samples' indices in the source
    skipped: list[tuple[str, str]] = field(default_factory=list)
    refused: str | None = None

    def pin_memory(self) -> Decoded:
        # DataLoader(pin_memory=True) pins what has this method: page-locked, the copy to the
        # GPU runs asynchronously.
        self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        return self


class BatchReader(Dataset):
    """reader[indices] is one batch read from `source`. A sample that cannot be read is
    skipped (`skip_bad`) or refuses the batch; a refusal travels back as a value, since an
    exception raised in a worker reaches the main process with the worker's traceback pasted
    into its message."""

    def __init__(self, source: Source, skip_bad: bool = False) -> None:
        self.source = source
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, indices: Any) -> Decoded:
        indices = torch.as_tensor(indices).tolist()
        x = torch.empty((len(indices), *self.source.shape), dtype=torch.uint8)
        kept: list[int] = []
        skipped: list[tuple[str, str]] = []
        for index in indices:
            try:
                x[len(kept)].numpy()[...] = self.source.read(index)  # no copy but this
            except UserError as err:
                if not self.skip_bad:
                    return Decoded(x[:0], self.source.labels[:0], [], refused=str(err))
                skipped.append((self.source.name(index), str(err)))
                continue
            kept.append(index)
        return Decoded(x[: len(kept)], self.source.labels[kept], kept, skipped)


class Skipped:
    """The samples skipped as unreadable (data.skip_bad=true): name → reason, in the order
    found; `report` tells the user of those found since it last did."""

    def __init__(self) -> None:
        self.found: dict[str, str] = {}
        self.reported = 0

    def add(self, pairs: Iterable[tuple[str, str]]) -> None:
        for name, reason in pairs:
            self.found.setdefault(name, reason)

    def report(self, when: str = "") -> None:
        """One Notice for the samples found since the last report, with the first reasons."""
        if len(self.found) == self.reported:  # the usual case, checked for every batch
            return
        names = list(self.found)[self.reported :]
        self.reported = len(self.found)
        if not names:
            return
        shown = "; ".join(self.found[name] for name in names[:3])
        more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
        warnings.warn(
            f"skipped {len(names)} unreadable image(s){when} (data.skip_bad=true), listed in "
            f"skipped.txt in the run directory: {shown}{more}",
            Notice,
            stacklevel=3,
        )


def refusal(message: str) -> UserError:
    """The error for an unreadable sample, with the way around it."""
    return UserError(
        f"{message} Or skip unreadable images: data.skip_bad=true leaves them out and lists "
        f"them in the run directory."
    )


def _accept(decoded: Decoded, skipped: Skipped) -> Decoded:
    """The batch, after noting what it skipped; UserError when a sample refused it."""
    if decoded.refused is not None:
        raise refusal(decoded.refused)
    skipped.add(decoded.skipped)
    return decoded


def _loader(reader: BatchReader, batches: Iterable[Any], workers: int, **kwargs: Any) -> DataLoader:
    # batch_size=None: each item the sampler gives is a whole list of indices, read at once.
    # Its own generator: a DataLoader draws a seed for its workers at every pass, which would
    # otherwise come from the global generator and shift the model's initialization and dropout
    # by how many passes were made (streamed or held, workers or none).
    return DataLoader(
        reader,
        batch_size=None,
        sampler=batches,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


def read_all(
    reader: BatchReader, indices: np.ndarray, workers: int, skipped: Skipped
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The samples at `indices` read into one preallocated uint8 tensor (nothing but it grows
    with the data), their targets, and the indices kept (all but the skipped)."""
    x = torch.empty((len(indices), *reader.source.shape), dtype=torch.uint8)
    y = torch.empty(len(indices), dtype=torch.int64)
    chunks = [indices[i : i + CHUNK] for i in range(0, len(indices), CHUNK)]
    kept: list[int] = []
    for decoded in _loader(reader, chunks, workers):
        decoded = _accept(decoded, skipped)
        start = len(kept)
        kept.extend(decoded.index)
        x[start : len(kept)] = decoded.x
        y[start : len(kept)] = decoded.y
    return x[: len(kept)], y[: len(kept)], np.asarray(kept, dtype=np.int64)


def check_all(
    names: list[str], check: Callable[[str], Any], skip_bad: bool, skipped: Skipped
) -> np.ndarray:
    """Indices of the files `check` (a header read) accepts; a refused one is a UserError, or
    skipped and noted with `skip_bad`."""
    good = []
    for index, name in enumerate(names):
        try:
            check(name)
        except UserError as err:
            if not skip_bad:
                raise refusal(str(err)) from None
            skipped.add([(name, str(err))])
            continue
        good.append(index)
    return np.asarray(good, dtype=np.int64)


def stats_sample(n: int, seed: int) -> np.ndarray:
    """The training indices the statistics are measured on: all, or STATS_SAMPLE of them
    chosen by `seed` (in index order)."""
    if n <= STATS_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, STATS_SAMPLE, replace=False))


class PixelMoments:
    """Per-channel mean and std of uint8 samples scaled to [0, 1], summed exactly (integer
    counts of each value), so any split of the samples into chunks, streamed or held, gives
    the very same statistics."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # (channels, 256)

    def add(self, x: torch.Tensor) -> None:
        """Adds a (batch, channels, ...) uint8 tensor."""
        channels = x.shape[1]
        counts = torch.stack(
            [torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(channels)]
        )
        self.counts = counts if self.counts is None else self.counts + counts

    def result(self, ndim: int) -> dict[str, list]:
        """{"dims", "mean", "std"} as base._moments writes them (std with Bessel's correction,
        at least 1e-6), for samples of `ndim` dimensions (batch axis included)."""
        if self.counts is None:
            raise UserError("No training sample could be read to measure pixel statistics on.")
        means, stds = [], []
        values = list(range(256))
        for row in self.counts.tolist():  # Python integers: exact whatever the count
            n = sum(row)
            s1 = sum(v * c for v, c in zip(values, row, strict=True))
            s2 = sum(v * v * c for v, c in zip(values, row, strict=True))
            var = (n * s2 - s1 * s1) / (n * (n - 1)) if n > 1 else 0.0
            means.append(s1 / n / 255.0)
            stds.append(max(math.sqrt(var) / 255.0, 1e-6))
        pad = [1] * (ndim - 2)

        def nested(xs: list[float]) -> list:
            return torch.tensor(xs, dtype=torch.float32).reshape(1, -1, *pad).tolist()

        dims = [0, *range(2, ndim)]
        return {"dims": dims, "mean": nested(means), "std": nested(stds)}


def measure(
    reader: BatchReader, indices: np.ndarray, workers: int, skipped: Skipped
) -> dict[str, list]:
    """Pixel statistics of the samples at `indices`, read in chunks (never all at once)."""
    moments = PixelMoments()
    chunks = [indices[i : i + CHUNK] for i in range(0, len(indices), CHUNK)]
    for decoded in _loader(reader, chunks, workers):
        moments.add(_accept(decoded, skipped).x)
    return moments.result(1 + len(reader.source.shape))


def scaling(stats: dict[str, Any], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) tensors from stored statistics; ValueError when they do not fit samples of
    `shape` (a hand-edited or foreign preprocessing.json)."""
    mean = torch.tensor(stats["mean"], dtype=torch.float32)
    std = torch.tensor(stats["std"], dtype=torch.float32)
    want = (1, shape[0], *[1] * (len(shape) - 1))
    if mean.shape != want or std.shape != want:
        raise ValueError(f"statistics of shape {tuple(mean.shape)}, samples need {want}")
    return mean, std


def to_float(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 samples scaled to [0, 1] and standardized, (x / 255 - mean) / std, as one float
    copy changed in place: x · (1 / (255 std)) - mean / std. (torch.mul(x, scale) would make
    the float copy twice: mixed dtypes are converted into a temporary first.)"""
    scale = (1.0 / (255.0 * std)).to(x.device)
    shift = (-mean / std).to(x.device)
    return x.float().mul_(scale).add_(shift)


def memory_mode(in_memory: Any) -> str:
    """data.in_memory as "auto", "true" or "false"; UserError for anything else."""
    modes = {"auto": "auto", True: "true", False: "false"}
    mode = modes.get(in_memory) if isinstance(in_memory, (bool, str)) else None
    if mode is None:
        raise choice_error("value for data.in_memory", in_memory, ["auto", "true", "false"])
    return mode


def memory_budget(limit_mb: int | None) -> int:
    """Bytes in_memory=auto may hold: `limit_mb` when given, else the smaller of MEMORY_CAP and
    a quarter of the memory available now."""
    if limit_mb is not None:
        return limit_mb << 20
    return min(MEMORY_CAP, available_memory() // 4)


def available_memory() -> int:
    """Memory available to new allocations, in bytes (Linux: MemAvailable; elsewhere the free
    physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return MEMORY_CAP * 4


class _Epoch:
    """The DataLoader's sampler: this epoch's index batches, set before each pass (a
    persistent-worker DataLoader asks its sampler again at every pass)."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamBatches(TensorBatches):
    """Batches read by `reader` in DataLoader workers, scaled as they arrive.

    The indices are batched by TensorBatches itself (over a tensor of indices), so the shuffle
    (EpochShuffle: seed and trainer epoch), the distributed shards, `limit`, the folded last
    batch and the grouping by `per_step` are exactly an in-memory split's. A group holds at
    most GROUP_BYTES of decoded floats: a step of 32 batches of large images would not fit.
    """

    def __init__(
        self,
        reader: BatchReader,
        batch_size: int,
        scale: tuple[torch.Tensor, torch.Tensor],
        skipped: Skipped,
        workers: int = 0,
        device: torch.device | None = None,
        **options: Any,
    ) -> None:
        super().__init__((torch.arange(len(reader)),), batch_size, **options)
        if self.per_step:
            batch_bytes = 4 * batch_size * math.prod(reader.source.shape)
            self.per_step = max(1, min(self.per_step, GROUP_BYTES // batch_bytes))
        self.device = device if device is not None and device.type != "cpu" else None
        self.scale = tuple(t.to(self.device) if self.device else t for t in scale)
        self.skipped = skipped
        self.epoch = _Epoch()
        self.reader, self.workers = reader, workers
        self.loader: DataLoader | None = None  # made at the first pass, dropped by close()

    def close(self) -> None:
        """Stops the worker processes now. Its DataLoader keeps them from pass to pass
        (persistent workers: starting them each epoch would cost more than a small epoch);
        left to garbage collection, a Lightning trainer's reference cycle would close their
        queues before stopping them, and each would take 5 s to give up waiting."""
        self.loader = None  # the last reference: the workers stop as it goes

    def _indices(self) -> list[torch.Tensor]:
        """This epoch's index batches, ungrouped."""
        batches = []
        for step in super().__iter__():
            batches.extend(step if isinstance(step, list) else [step])
        return [indices for (indices,) in batches]

    def __iter__(self) -> Iterator[Any]:
        self.epoch.batches = self._indices()
        if self.loader is None:
            pin = self.device is not None and self.device.type == "cuda"
            self.loader = _loader(
                self.reader,
                self.epoch,
                self.workers,
                persistent_workers=self.workers > 0,
                pin_memory=pin,
            )
        try:
            yield from self._read()
        except GeneratorExit:  # Lightning stopped early (its sanity check): the workers serve on
            raise
        except BaseException:  # the run is over: its workers are not to wait for collection
            self.close()
            raise

    def _read(self) -> Iterator[Any]:
        # No local name for the loader: a traceback keeps its frames' locals, and with them
        # the workers, alive.
        group = self._group()
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        for decoded in self.loader:
            decoded = _accept(decoded, self.skipped)
            self.skipped.report(" while reading batches")
            if not len(decoded.y):  # every sample of the batch skipped
                continue
            x, y = decoded.x, decoded.y
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            batch = (to_float(x, *self.scale), y)
            if group is None:
                yield batch
                continue
            pending.append(batch)
            if len(pending) == group:
                yield pending
                pending = []
        if pending:
            yield pending


class NotInMemory(dict):
    """A streamed datamodule's `splits`: empty, and asking it for a split says why."""

    def __missing__(self, key: str) -> Any:
        # model=gan measures the data's range and trains its reference judge on the split whole
        raise UserError(
            f"model=gan needs the {key} split in memory, but it is streamed from disk "
            f"(data.in_memory=false, or data.in_memory=auto for more data than "
            f"data.memory_limit_mb holds). Use data.in_memory=true if it fits in memory (for "
            f"images, a smaller data.image_size shrinks it)."
        )
