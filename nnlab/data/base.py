"""In-memory tensor datasets batched by slicing, and the DataModule base they share."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.model_selection import train_test_split

from nnlab.errors import UserError

T = TypeVar("T")

ON_DEVICE_LIMIT = 1 << 30  # bytes of a split kept on the GPU whole (more: moved batch by batch)


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A shuffle of range(n) fixed by the seed and the epoch alone: the trainer's epoch, not a
    count of passes, so a resumed fit (which starts mid-run) shuffles every epoch as the
    uninterrupted run did. Without a trainer, passes are counted."""

    def __init__(self, n: int, seed: int, trainer: pl.Trainer | None = None) -> None:
        self.n, self.seed, self.trainer = n, seed, trainer
        self.passes = 0

    def order(self) -> torch.Tensor:
        """This epoch's order; each call is one pass."""
        epoch = self.trainer.current_epoch if self.trainer is not None else self.passes
        self.passes += 1
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=generator)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(self.order().tolist())


class TensorBatches:
    """Mini-batches of in-memory tensors, cut by slicing.

    A DataLoader over a TensorDataset collates every sample one by one; on small datasets that
    costs more than the model. Shuffling is an EpochShuffle, so batch order depends only on the
    seed and the epoch number.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        per_step: int | None = None,
        limit: int | float | None = None,
    ) -> None:
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.per_step = per_step  # yield lists of up to this many batches: one Lightning step's
        self.limit = limit  # batches per epoch: a count (int) or a fraction (float); 0: none
        self.order = EpochShuffle(len(tensors[0]), seed) if shuffle else None

    def _folds_last(self, n: int) -> bool:
        # When n % batch_size == 1 the last training batch would hold one sample, and BatchNorm
        # cannot train on one (torch raises): that sample joins the batch before it instead.
        return self.shuffle and 1 < self.batch_size < n and n % self.batch_size == 1

    def _shard(self) -> tuple[int, int, int]:
        """(samples this process reads, its rank, the world size). In a distributed run each
        process reads every world-th sample; training shards are cut to one size, because every
        process must take the same number of steps."""
        n = len(self.tensors[0])
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return n, 0, 1
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if self.shuffle:
            return n // world, rank, world
        return len(range(rank, n, world)), rank, world

    def _full_count(self) -> int:
        n = self._shard()[0]
        return (n + self.batch_size - 1) // self.batch_size - self._folds_last(n)

    @property
    def steps(self) -> int:
        """Batches per epoch (optimizer steps, when training), after `limit`."""
        count = self._full_count()
        if self.limit is None:
            return count
        if not self.limit:
            return 0
        if isinstance(self.limit, float):  # a fraction keeps at least one batch
            return min(count, max(1, int(count * self.limit)))
        return min(count, self.limit)

    def _group(self) -> int | None:
        # DDP reduces gradients inside its wrapped forward, once per Lightning step: in a
        # distributed run every step must hold exactly one batch.
        return 1 if self.per_step and self._shard()[2] > 1 else self.per_step

    def __len__(self) -> int:
        group = self._group()
        return self.steps if group is None else -(-self.steps // group)

    def following(self, trainer: pl.Trainer | None) -> TensorBatches:
        """Shuffle by the trainer's epoch (see EpochShuffle)."""
        if self.order is not None:
            self.order.trainer = trainer
        return self

    def __iter__(self):
        n, rank, world = self._shard()
        index = self.order.order() if self.order is not None else None
        if world > 1:  # the same order on every process (same seed), so the shards are disjoint
            whole = index if index is not None else torch.arange(len(self.tensors[0]))
            index = whole[rank::world][:n]
        full = self._full_count()
        batches = (self._batch(index, i, n, full) for i in range(self.steps))
        group = self._group()
        if group is None:
            yield from batches
            return
        step: list[tuple[torch.Tensor, ...]] = []
        for batch in batches:
            step.append(batch)
            if len(step) == group:
                yield step
                step = []
        if step:
            yield step

    def _batch(
        self, index: torch.Tensor | None, i: int, n: int, full: int
    ) -> tuple[torch.Tensor, ...]:
        """Batch i: a slice of the tensors, or of their samples in `index` order, gathered batch
        by batch (a shuffled copy of the whole split would double the memory it takes)."""
        cut = slice(i * self.batch_size, n if i == full - 1 else (i + 1) * self.batch_size)
        if index is None:
            return tuple(t[cut] for t in self.tensors)
        rows = index[cut]
        return tuple(t[rows] for t in self.tensors)


def carve(
    count: int, fraction: float, labels: np.ndarray | None, seed: int, what: str, remedy: str
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (rest, part) of `count` samples, `fraction` of them in part, stratified by
    `labels` when given; UserError naming `what` (and saying `remedy`) when they do not split."""
    try:
        rest, part = train_test_split(
            np.arange(count), test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as err:
        # sklearn speaks of test_size and members: say which data and settings did not fit
        classes = "" if labels is None else f" of {len(np.unique(labels))} classes"
        raise UserError(
            f"Cannot split {what}{classes} into train/val/test parts ({err}). {remedy}"
        ) from None
    return rest, part


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test), each keeping the class proportions of `labels`."""
    index = np.arange(len(labels))
    rest, test = train_test_split(
        index, test_size=test_fraction, stratify=labels, random_state=seed
    )
    train, val = train_test_split(
        rest,
        test_size=val_fraction / (1.0 - test_fraction),
        stratify=labels[rest],
        random_state=seed,
    )
    return train, val, test


class TensorDataModule(pl.LightningDataModule):
    """A dataset held as tensors: subclasses fill the splits in `load()`.

    After `setup()`, `kind` (which task fits), `input_shape`, `num_outputs` and, for
    classification, `num_classes` and `class_names` tell the model builder and the task what they
    need, so users never repeat those numbers. A split is (x, y) or, for padded variable-length
    sequences, (x, y, lengths).
    """

    kind = "classification"

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction  # ignored where the data has an official test set
        self.split_seed = split_seed
        self.seed = seed
        self.splits: dict[str, tuple[torch.Tensor, ...]] = {}
        self.class_names: list[str] = []
        # Set by a task that takes several batches per Lightning step (SupervisedTask), which
        # then also applies the trainer's batch limits itself: Lightning would count the lists.
        self.steps_per_execution: int | None = None
        self.limits: dict[str, int | float | None] = {}  # split → limit_<split>_batches
        # What load() learned from the training data (scaling statistics, vocabularies, class
        # names, ...), in plain JSON types: saved with the run and its checkpoints, and given
        # back through restore() so eval, predict and resume apply it unchanged.
        self.fitted: dict[str, Any] = {}
        # Streamed splits' loaders (anything with close()), whose workers teardown() stops.
        self.open_loaders: weakref.WeakSet[Any] = weakref.WeakSet()

    def teardown(self, stage: str | None = None) -> None:
        """Lightning's end of a fit, validation or test: streamed loaders' worker processes
        stop here. Left to garbage collection, a trainer's reference cycle closes their queues
        before stopping them, and each worker then waits 5 s to give up."""
        for batches in list(self.open_loaders):
            batches.close()

    def restore(self, fitted: dict[str, Any]) -> None:
        """Use what a trained run learned from its training data instead of learning it again
        (call before setup)."""
        self.fitted = dict(fitted)

    def learned(self, name: str, fit: Callable[[], T]) -> T:
        """The value restored under `name`, else `fit()`, kept under `name` from now on.

        `fit` must return plain JSON types (lists, numbers, strings, dicts): they go into
        preprocessing.json and into checkpoints read with torch's safe loader."""
        if name not in self.fitted:
            self.fitted[name] = fit()
        return self.fitted[name]

    def standardize(
        self, splits: dict[str, tuple[torch.Tensor, ...]], dims: tuple[int, ...]
    ) -> dict[str, tuple[torch.Tensor, ...]]:
        """Every split's inputs scaled by the training split's mean and std over `dims` (no
        test leakage), or by the restored ones. In place: a scaled copy would double the peak
        memory of loading a split that barely fits."""
        x_train = splits["train"][0]
        stats = self.learned("standardize", lambda: _moments(x_train, dims))
        mean = torch.tensor(stats["mean"], dtype=x_train.dtype)
        std = torch.tensor(stats["std"], dtype=x_train.dtype)
        return {name: (t[0].sub_(mean).div_(std), *t[1:]) for name, t in splits.items()}

    def load(self) -> None:
        """Fill self.splits['train'|'val'|'test'] = (x, y) and self.class_names."""
        raise NotImplementedError

    def inputs(self, paths: list[str]) -> tuple[list[tuple[str, str]], torch.Tensor]:
        """New samples read from the files at `paths` and scaled as the training data was (by
        `fitted`): their ids, (file, item within it), and the model's inputs. For datasets
        read from the user's files; the others have nothing to read new samples from."""
        raise UserError(
            f"nnlab predict reads new inputs from files for runs trained on data=table (rows "
            f"of a CSV or Parquet file), data=arrays (.npz or .npy) or data=image_folder "
            f"(images), but this run's data ({type(self).__name__}) has no such files. Test it "
            f"with nnlab eval instead."
        )

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.load()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"][0].shape[1:])

    @property
    def num_outputs(self) -> int:
        """Values the model must output per sample: one logit per class, or the target size."""
        if self.kind == "classification":
            return self.num_classes
        return int(self.splits["train"][1][0].numel())

    @property
    def variable_length(self) -> bool:
        return len(self.splits["train"]) == 3

    def _on_device(self, split: str) -> tuple[torch.Tensor, ...]:
        # A small dataset moves to the accelerator once, not batch by batch every epoch.
        tensors = self.splits[split]
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        size = sum(t.numel() * t.element_size() for t in tensors)
        if device is None or device.type == "cpu" or size > ON_DEVICE_LIMIT:
            return tensors
        return tuple(t.to(device) for t in tensors)

    def _batches(self, split: str, shuffle: bool | None = None) -> TensorBatches:
        return TensorBatches(
            self._on_device(split),
            self.batch_size,
            shuffle=split == "train" if shuffle is None else shuffle,
            seed=self.seed,
            per_step=self.steps_per_execution,
            limit=self.limits.get(split),
        )

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train").following(self.trainer)

    def training_split_in_order(self) -> TensorBatches:
        """The training split unshuffled: to score a trained model on its own training data."""
        return self._batches("train", shuffle=False)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val")

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test")


def _moments(x: torch.Tensor, dims: tuple[int, ...]) -> dict[str, list]:
    """Mean and std of `x` over `dims` (kept as size-1 axes), as nested lists."""
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return {"dims": list(dims), "mean": mean.tolist(), "std": std.tolist()}


def split_arrays(
    x: np.ndarray,
    y: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stratified train/val/test tensors (float32 inputs, int64 labels) from one labelled array."""
    parts = stratified_split(y, val_fraction, test_fraction, split_seed)
    return {
        name: (
            torch.as_tensor(x[idx], dtype=torch.float32),
            torch.as_tensor(y[idx], dtype=torch.int64),
        )
        for name, idx in zip(("train", "val", "test"), parts, strict=True)
    }
