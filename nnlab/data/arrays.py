"""data=arrays: the user's own NumPy arrays, as features, (C, L) signals or (C, H, W) images.

Files: a .npz with `x` and `y` (split by the fractions), or with `x_train`, `y_train`, `x_test`,
`y_test` (and optionally `x_val`, `y_val`), whose official test set is used as it is; or a .npy
of inputs with `data.labels` naming a .npy of labels. Arrays are memory-mapped where the file
allows (array_files.py). Small data becomes in-memory tensors batched by slicing; larger data
streams batch by batch from the memory map through DataLoader workers (ArrayBatches).

What is learned from the training split (the layout, the task, the classes, the scaling) goes
through `learned()`, so a restored datamodule applies it to whatever files it reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from nnlab.data.array_files import npz_keys, read_npy, read_npz
from nnlab.data.base import TensorBatches, TensorDataModule, carve
from nnlab.data.streaming import GROUP_BYTES, NotInMemory, memory_budget
from nnlab.errors import UserError

IMAGE_CHANNELS = (1, 3, 4)  # a last axis of this size, after a larger one: channels-last images
NORM_DIMS = {"features": (0,), "signal": (0, 2), "image": (0, 2, 3)}  # per feature / channel
CHUNK_BYTES = 64 << 20  # float64 bytes per chunk when the statistics are read from disk
OFFICIAL = ("x_train", "y_train", "x_test", "y_test")
INPUT_KINDS, LABEL_KINDS = "biuf", "biufU"  # numpy dtype kinds: numbers (and text labels)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ArraySource:
    """Where one array lies: a .npy file, or one key of a .npz. Small and picklable, so each
    DataLoader worker opens its own memory map rather than receiving a copy of the data."""

    path: Path
    key: str | None = None

    def open(self) -> np.ndarray:
        return read_npy(self.path) if self.key is None else read_npz(self.path, self.key)

    def __str__(self) -> str:
        return str(self.path) if self.key is None else f"{self.path} [{self.key}]"


@dataclass
class Part:
    """Inputs and labels as the files hold them (x memory-mapped where possible)."""

    source: ArraySource
    x: np.ndarray
    y: np.ndarray


class Samples:
    """Rows of x → the model's float32 samples: reshaped (channels moved first) as the layout
    says, uint8 images scaled to [0, 1], then standardized when given the statistics."""

    def __init__(self, layout: dict[str, Any], stats: dict[str, Any] | None = None) -> None:
        self.layout, self.shape = layout, tuple(layout["shape"])
        self.mean = self.std = None
        if stats is not None:  # as TensorDataModule.standardize makes them, so to the last bit
            self.mean = torch.tensor(stats["mean"], dtype=torch.float32)
            self.std = torch.tensor(stats["std"], dtype=torch.float32)

    def unscaled(self, rows: np.ndarray) -> np.ndarray:
        x = rows.astype(np.float32)
        if self.layout["scale"] != 1:
            x /= self.layout["scale"]
        if self.layout["channels_last"]:
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x.reshape(len(rows), *self.shape))

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(self.unscaled(rows))
        return x if self.mean is None else (x - self.mean) / self.std


def decide_layout(x: np.ndarray, asked: str, where: ArraySource) -> dict[str, Any]:
    """What the samples of `x` are (features, signal or image), their shape as the models see
    it, and how to get there from the file's rows. The rule is in docs/arrays.md."""
    rest = tuple(x.shape[1:])
    kind = asked
    if asked == "auto":  # 3-D is ambiguous: uint8 (N, H, W) are images, others (N, C, L) signals
        by_rank = {0: "features", 1: "features", 2: "image" if x.dtype == np.uint8 else "signal"}
        kind = by_rank.get(len(rest), "image")
    channels_last = kind == "image" and len(rest) == 3 and _channels_last(rest)
    if kind == "features":
        shape = (1, math.prod(rest))  # a 1-channel signal too, so that every model reads it
    elif kind == "signal" and len(rest) in (1, 2):
        shape = rest if len(rest) == 2 else (1, *rest)
    elif kind == "image" and len(rest) in (2, 3):
        shape = (rest[2], *rest[:2]) if channels_last else rest if len(rest) == 3 else (1, *rest)
    else:
        raise UserError(
            f"{where} has samples of shape {rest}, which data.layout={asked} cannot read: "
            f"features may have any shape (flattened), signals are (L,) or (C, L), images "
            f"(H, W), (C, H, W) or (H, W, C). Set data.layout=features, signal or image."
        )
    scale = 255 if kind == "image" and x.dtype == np.uint8 else 1
    return {"kind": kind, "shape": list(shape), "channels_last": channels_last, "scale": scale}


def _channels_last(rest: tuple[int, ...]) -> bool:
    return rest[2] in IMAGE_CHANNELS and rest[0] not in IMAGE_CHANNELS


def read_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows], read from the file in its own order (sequential on disk), kept in `rows` order."""
    order = np.argsort(rows)
    out = np.empty((len(rows), *x.shape[1:]), x.dtype)
    out[order] = x[rows[order]]
    return out


def moments(x: np.ndarray, rows: np.ndarray, samples: Samples, dims: tuple[int, ...]) -> dict:
    """Mean and std over `dims` of the samples at `rows` of `x`, read in chunks (float64,
    merged by Chan's update), in the format TensorDataModule.standardize reads."""
    step = max(1, CHUNK_BYTES // (8 * math.prod(samples.shape)))
    count, mean, m2 = 0, np.zeros(()), np.zeros(())
    for start in range(0, len(rows), step):
        chunk = samples.unscaled(x[np.sort(rows[start : start + step])]).astype(np.float64)
        n = math.prod(chunk.shape[d] for d in dims)
        chunk_mean = chunk.mean(axis=dims, keepdims=True)
        chunk_m2 = ((chunk - chunk_mean) ** 2).sum(axis=dims, keepdims=True)
        delta, total = chunk_mean - mean, count + n
        mean = mean + delta * (n / total)
        m2 = m2 + chunk_m2 + delta**2 * (count * n / total)
        count = total
    std = np.maximum(np.sqrt(m2 / max(count - 1, 1)), 1e-6)
    return {"dims": list(dims), "mean": mean.tolist(), "std": std.tolist()}


class ArraysDataModule(TensorDataModule):
    """The user's arrays (see the module's docstring), in memory or streamed from disk."""

    def __init__(
        self,
        path: str,
        labels: str | None = None,
        layout: str = "auto",
        task: str = "auto",
        in_memory: str | bool = "auto",
        memory_limit_mb: int | None = None,
        workers: int = 0,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, split_seed, seed)
        self.path, self.labels = Path(path), labels
        self.layout, self.task = layout, task
        self.in_memory, self.memory_limit_mb, self.workers = in_memory, memory_limit_mb, workers
        self.streams: dict[str, RowReader] = {}  # split → its reader, when streamed
        self.targets: dict[str, torch.Tensor] = {}  # split → class indices or targets

    @property
    def signal(self) -> bool:
        """Whether 2-D samples are (channels, length) signals, not (steps, features) sequences."""
        return self.fitted.get("layout", {}).get("kind") in ("features", "signal")

    @property
    def streaming(self) -> bool:
        return bool(self.streams)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.fitted["layout"]["shape"])

    @property
    def variable_length(self) -> bool:
        return False

    def setup(self, stage: str | None = None) -> None:
        if not (self.splits or self.streams):
            self.load()

    def load(self) -> None:
        parts = self._parts()
        first = parts.get("train") or parts["all"]
        layout = self.learned("layout", lambda: decide_layout(first.x, self.layout, first.source))
        for part in parts.values():
            self._check_shape(part, layout)
        self.kind = self.learned("task", lambda: self._infer_task(first))
        rows = self._split_rows(parts)
        if self.kind == "classification":
            self.class_names = [str(c) for c in self._classes(*rows["train"])]
        self.targets = {name: self._labels(part, index) for name, (part, index) in rows.items()}
        train, train_rows = rows["train"]
        dims = NORM_DIMS[layout["kind"]]
        stats = self.learned(
            "standardize", lambda: moments(train.x, train_rows, Samples(layout), dims)
        )
        if not np.isfinite(np.asarray(stats["mean"])).all():
            raise UserError(
                f"{train.source} holds NaN or infinite values in its training split: replace "
                f"or drop them before training (np.nan_to_num, or a mask over the rows)."
            )
        if self._keep_in_memory(rows, layout):
            self._hold(rows, layout)
        else:
            self.splits = NotInMemory()
            samples = Samples(layout, stats)
            self.streams = {
                name: RowReader(part.source, index, self.targets[name], samples)
                for name, (part, index) in rows.items()
            }

    def _hold(self, rows: dict[str, tuple[Part, np.ndarray]], layout: dict[str, Any]) -> None:
        """Every split as in-memory tensors, standardized by the training statistics."""
        unscaled = Samples(layout).unscaled
        splits = {
            name: (torch.from_numpy(unscaled(read_rows(part.x, index))), self.targets[name])
            for name, (part, index) in rows.items()
        }
        self.splits = self.standardize(splits, NORM_DIMS[layout["kind"]])
        for name, (part, _) in rows.items():
            if not torch.isfinite(self.splits[name][0]).all():
                raise UserError(
                    f"{part.source} holds NaN or infinite values in its {name} split: replace "
                    f"or drop them before training (np.nan_to_num, or a mask over the rows)."
                )

    def inputs(self, paths: list[str]) -> tuple[list[tuple[str, str]], torch.Tensor]:
        """Samples of new .npy files, or of the `x` (else `x_test`) array of .npz files, scaled
        as the training split was; a sample is named by its index in its file."""
        layout = self.fitted["layout"]
        samples = Samples(layout, self.fitted["standardize"])
        ids: list[tuple[str, str]] = []
        xs = []
        for given in paths:
            path = Path(given).expanduser()
            source = ArraySource(path, self._input_key(path))
            x = source.open()
            self._check_shape(Part(source, x, np.empty(len(x))), layout)
            xs.append(samples(np.asarray(x)))
            ids += [(str(given), str(i)) for i in range(len(x))]
        return ids, torch.cat(xs)

    def _input_key(self, path: Path) -> str | None:
        if not path.is_file() or path.suffix not in (".npy", ".npz"):
            raise UserError(
                f"Cannot read inputs from {path}: give .npy files of samples, or .npz files "
                f"holding them as x (or x_test), shaped as in training."
            )
        if path.suffix == ".npy":
            return None
        keys = npz_keys(path)
        for key in ("x", "x_test"):
            if key in keys:
                return key
        raise UserError(
            f"{path} holds the arrays {', '.join(keys) or 'none'}, but no x or x_test: name "
            f"the array of samples to predict on x (np.savez(file, x=samples))."
        )

    def _parts(self) -> dict[str, Part]:
        """The arrays the files hold: {"all": ...} to split, or train, test (and val)."""
        if not self.path.is_file():
            raise UserError(
                f"data.path={self.path} is not a file. Give a .npz with arrays x and y (or "
                f"x_train, y_train, x_test, y_test), or a .npy of inputs with data.labels=y.npy."
            )
        if self.path.suffix == ".npy":
            if self.labels is None:
                raise UserError(
                    f"data.path={self.path} is a .npy of inputs: name the .npy of their labels "
                    f"too, e.g. data.labels=y.npy (or save both in one file with np.savez)."
                )
            return {"all": self._part(ArraySource(self.path), ArraySource(Path(self.labels)))}
        if self.path.suffix != ".npz":
            raise UserError(
                f"data.path={self.path}: data=arrays reads NumPy files, a .npz archive or a .npy "
                f"array (with data.labels=labels.npy), not '{self.path.suffix}' files."
            )
        return self._npz_parts(npz_keys(self.path))

    def _npz_parts(self, keys: list[str]) -> dict[str, Part]:
        def part(x: str, y: str) -> Part:
            return self._part(ArraySource(self.path, x), ArraySource(self.path, y))

        if self.labels is not None:
            raise UserError(
                f"data.labels={self.labels} goes with a .npy of inputs; {self.path} is a .npz, "
                f"whose labels are its array y (or y_train, y_test). Remove data.labels."
            )
        if set(OFFICIAL) <= set(keys):
            parts = {"train": part("x_train", "y_train"), "test": part("x_test", "y_test")}
            if {"x_val", "y_val"} <= set(keys):
                parts["val"] = part("x_val", "y_val")
            elif {"x_val", "y_val"} & set(keys):
                raise UserError(f"{self.path} has only one of x_val and y_val: give both, or none.")
            return parts
        if {"x", "y"} <= set(keys):
            return {"all": part("x", "y")}
        raise UserError(
            f"{self.path} holds the arrays {', '.join(keys) or 'none'}, but data=arrays needs x "
            f"and y (split by data.val_fraction and data.test_fraction), or x_train, y_train, "
            f"x_test and y_test (optionally x_val and y_val). Save them under those names: "
            f"np.savez(path, x=inputs, y=labels)."
        )

    def _part(self, x_source: ArraySource, y_source: ArraySource) -> Part:
        """Both arrays, opened and checked: number inputs, number or text labels, one label
        (or target row) per sample."""
        x, y = x_source.open(), y_source.open()
        for source, array, kinds, what in (
            (x_source, x, INPUT_KINDS, "numbers (bool, integer or float)"),
            (y_source, y, LABEL_KINDS, "numbers or text"),
        ):
            if array.dtype.kind not in kinds or array.dtype.names:
                raise UserError(
                    f"{source} has dtype {array.dtype}, but it must hold {what}. Convert it "
                    f"before saving, e.g. np.asarray(a, dtype=np.float32)."
                )
            if array.ndim == 0 or len(array) == 0:
                raise UserError(f"{source} holds no samples (shape {array.shape}).")
        if len(x) != len(y):
            raise UserError(
                f"{x_source} holds {len(x)} samples but {y_source} holds {len(y)} labels: "
                f"they must match one to one."
            )
        return Part(x_source, x, y)

    def _check_shape(self, part: Part, layout: dict[str, Any]) -> None:
        shape = decide_layout(part.x, layout["kind"], part.source)["shape"]
        if shape != layout["shape"]:
            raise UserError(
                f"{part.source} has samples of shape {tuple(part.x.shape[1:])}, which read as "
                f"{layout['kind']} of shape {tuple(shape)}, but the training samples are "
                f"{tuple(layout['shape'])}: every split (and the data a run is evaluated on) "
                f"needs samples of one shape."
            )

    def _infer_task(self, part: Part) -> str:
        """Classification for integer, bool or text labels, regression for floats, unless
        data.task says."""
        task = self.task
        if task == "auto":
            task = "regression" if part.y.dtype.kind == "f" else "classification"
        if task == "regression" and part.y.dtype.kind == "U":
            raise UserError(
                f"data.task=regression predicts numbers, but {part.source.path} holds text "
                f"labels ({part.y.dtype}). Use data.task=classification or auto."
            )
        if task == "classification" and part.y.shape[1:] not in ((), (1,)):
            raise UserError(
                f"Classification takes one label per sample, but the labels have shape "
                f"{part.y.shape}. Save labels of shape (N,), or use data.task=regression for "
                f"several real-valued targets per sample."
            )
        return task

    def _split_rows(self, parts: dict[str, Part]) -> dict[str, tuple[Part, np.ndarray]]:
        """split → (the part it comes from, its rows there)."""
        if "all" not in parts:
            rows = {name: (part, np.arange(len(part.y))) for name, part in parts.items()}
            if "val" not in parts:  # carved from the training arrays
                train = parts["train"]
                rest, val = self._carve(np.arange(len(train.y)), train.y, self.val_fraction)
                rows["train"], rows["val"] = (train, rest), (train, val)
            return {name: rows[name] for name in SPLITS}
        part = parts["all"]
        if self.val_fraction + self.test_fraction >= 1:
            raise UserError(
                f"data.val_fraction={self.val_fraction} and data.test_fraction="
                f"{self.test_fraction} leave no training data: their sum must be below 1."
            )
        rest, test = self._carve(np.arange(len(part.y)), part.y, self.test_fraction)
        share = self.val_fraction / (1 - self.test_fraction)
        train, val = self._carve(rest, part.y[rest], share)
        return {"train": (part, train), "val": (part, val), "test": (part, test)}

    def _carve(
        self, index: np.ndarray, y: np.ndarray, fraction: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rest, part) of `index`, `fraction` of it in part; stratified by class."""
        labels = np.asarray(y).reshape(len(y), -1)[:, 0] if self.kind == "classification" else None
        rest, part = carve(
            len(index),
            fraction,
            labels,
            self.split_seed,
            f"{len(index)} samples of {self.path}",
            "Use more samples (of every class), other data.val_fraction / data.test_fraction, "
            "or give the splits in the .npz (x_train, ..., x_test).",
        )
        return index[rest], index[part]

    def _classes(self, train: Part, index: np.ndarray) -> list:
        """The training split's distinct labels, sorted: class i is the i-th."""
        classes = self.learned("classes", lambda: np.unique(np.asarray(train.y[index])).tolist())
        if len(classes) < 2:
            raise UserError(
                f"The training labels of {train.source.path} hold one class ({classes[0]}): a "
                f"classifier needs at least two. For real-valued targets use data.task=regression."
            )
        return classes

    def _labels(self, part: Part, index: np.ndarray) -> torch.Tensor:
        """The labels at `index` as class indices (int64) or targets (float32, (n, K))."""
        y = np.asarray(part.y[index])
        if self.kind == "regression":
            y = y.astype(np.float32).reshape(len(y), -1)
            if not np.isfinite(y).all():
                raise UserError(f"{part.source.path}: the targets hold NaN or infinite values.")
            return torch.from_numpy(y)
        values, codes = np.unique(y.reshape(-1), return_inverse=True)
        lookup = {c: i for i, c in enumerate(self.fitted["classes"])}
        unknown = [v for v in values.tolist() if v not in lookup]
        if unknown:
            raise UserError(
                f"{part.source.path} has labels the training split does not: "
                f"{', '.join(map(str, unknown[:10]))}. Known classes: "
                f"{', '.join(self.class_names[:20])}."
            )
        return torch.as_tensor([lookup[v] for v in values.tolist()], dtype=torch.int64)[codes]

    def _keep_in_memory(
        self, rows: dict[str, tuple[Part, np.ndarray]], layout: dict[str, Any]
    ) -> bool:
        if self.in_memory != "auto":
            return bool(self.in_memory)
        samples = sum(len(index) for _, index in rows.values())
        return samples * math.prod(layout["shape"]) * 4 <= memory_budget(self.memory_limit_mb)

    @property
    def num_outputs(self) -> int:
        if self.kind == "classification":
            return self.num_classes
        return int(self.targets["train"][0].numel())

    def _batches(self, split: str, shuffle: bool | None = None) -> TensorBatches | ArrayBatches:
        if split not in self.streams:
            return super()._batches(split, shuffle)
        reader = self.streams[split]
        per_step = self.steps_per_execution
        if per_step:  # a step's batches are in memory at once: at most GROUP_BYTES of them
            batch_bytes = 4 * self.batch_size * math.prod(self.input_shape)
            per_step = max(1, min(per_step, GROUP_BYTES // batch_bytes))
        plan = TensorBatches(
            (torch.arange(len(reader)),),
            self.batch_size,
            shuffle=split == "train" if shuffle is None else shuffle,
            seed=self.seed,
            per_step=per_step,
            limit=self.limits.get(split),
        )
        batches = ArrayBatches(plan, reader, self.workers)
        self.open_loaders.add(batches)
        return batches


class RowReader(torch.utils.data.Dataset):
    """Reads batches of one split from its array file: what each DataLoader worker runs.

    An item is one batch's positions in the split, as TensorBatches cuts them from an index
    tensor (a 1-tuple), or a list of such (one Lightning step's batches)."""

    def __init__(
        self, source: ArraySource, rows: np.ndarray, labels: torch.Tensor, samples: Samples
    ) -> None:
        self.source, self.rows, self.labels, self.samples = source, rows, labels, samples
        self._x: np.ndarray | None = None  # opened in each process that reads

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_x": None}  # a worker maps the file itself

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, list):
            return [self._batch(positions) for (positions,) in item]
        return self._batch(item[0])

    def _batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._x is None:
            self._x = self.source.open()
        raw = read_rows(self._x, self.rows[positions.numpy()])
        return self.samples(raw), self.labels[positions]


def _as_is(batch: Any) -> Any:
    # DataLoader's default would turn a batch's tuple into a list: a list is a step's batches.
    return batch


class ArrayBatches:
    """Batches read from disk by DataLoader workers: the same batches, in the same order,
    grouping and number, as a TensorBatches over the split would give (it plans them)."""

    def __init__(self, plan: TensorBatches, reader: RowReader, workers: int) -> None:
        self.plan, self.reader, self.workers = plan, reader, workers
        self.loader: torch.utils.data.DataLoader | None = None  # made at the first pass

    def close(self) -> None:
        """Stops the worker processes now (see TensorDataModule.teardown)."""
        self.loader = None  # the last reference: the workers stop as it goes

    @property
    def steps(self) -> int:
        return self.plan.steps

    def __len__(self) -> int:
        return len(self.plan)

    def following(self, trainer: pl.Trainer | None) -> ArrayBatches:
        self.plan.following(trainer)
        return self

    def __iter__(self):
        if self.loader is None:
            self.loader = torch.utils.data.DataLoader(
                self.reader,
                sampler=self.plan,
                batch_size=None,
                collate_fn=_as_is,
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                # its own generator: a DataLoader draws its workers' base seed from the one it
                # is given, and from torch's global one (dropout's) otherwise
                generator=torch.Generator(),
            )
        return iter(self.loader)
