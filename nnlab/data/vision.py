"""Image datasets read from disk: torchvision's MNIST/Fashion-MNIST/CIFAR-10 layouts, ImageFolder.

Nothing here ever downloads: the machines nnlab runs on may have no internet, and a silent
multi-hundred-megabyte fetch inside a training command is a surprise nobody wants.
"""

from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torchvision import datasets

from nnlab.data.base import TensorBatches, TensorDataModule, carve
from nnlab.data.streaming import (
    CHUNK,
    BatchReader,
    NotInMemory,
    PixelMoments,
    Skipped,
    StreamBatches,
    check_all,
    measure,
    memory_budget,
    memory_mode,
    read_all,
    scaling,
    stats_sample,
    to_float,
)
from nnlab.errors import UserError, choice_error
from nnlab.images import check_image, image_files, read_square

Pair = tuple[torch.Tensor, torch.Tensor]

MNIST_FILES = [f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
# dataset -> (folder under root, expected files, torchvision class that fetches them)
LAYOUTS = {
    "mnist": ("MNIST/raw", MNIST_FILES, "MNIST"),
    "fashion_mnist": ("FashionMNIST/raw", MNIST_FILES, "FashionMNIST"),
    "cifar10": ("cifar-10-batches-py", CIFAR_FILES, "CIFAR10"),
}


SPLIT_REMEDY = "Use more images per class or larger data.val_fraction/data.test_fraction."


def _carve(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int) -> tuple[Pair, Pair]:
    """Split (x, y) into a stratified (rest, part) pair; `fraction` of it goes to `part`."""
    rest, part = carve(len(y), fraction, y.numpy(), seed, f"{len(y)} images", SPLIT_REMEDY)
    return (x[rest], y[rest]), (x[part], y[part])


def _read_idx(path: Path) -> np.ndarray:
    """An idx-format array (the MNIST file format), from `path` or `path`.gz."""
    # torchvision's MNIST(download=False) reads only the uncompressed files, hence our own
    # parser: the .gz files are what people usually have lying around.
    gz = path.with_name(path.name + ".gz")
    data = bytearray(path.read_bytes() if path.exists() else gzip.decompress(gz.read_bytes()))
    ndim = data[3]
    shape = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape.astype(int))


CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@cache
def _array_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 pickle may name: how numpy rebuilds arrays and scalars,
    under the module names of numpy 1 (numpy.core) and numpy 2 (numpy._core) alike."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 1.26
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(text, "latin1") in pickle protocols < 3.
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's pickles: dicts, lists, strings, numbers and numpy arrays, nothing else.

    A pickle names the functions it calls to rebuild its objects; pickle.load calls whatever it
    names (os.system, exec, ...), which makes any pickle a program. Every name goes through
    find_class, so refusing all but numpy's array rebuilders keeps a file from running code.
    """

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the batches were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = _array_globals().get((module, name))
        if allowed is None:
            raise UserError(
                f"Refused to read {self.path}: it names the Python global '{module}.{name}', "
                f"which a CIFAR-10 batch never holds (only numpy arrays, lists and strings), and "
                f"loading it would run code the file chooses. This file is not the real dataset "
                f"and may be malicious: delete it, get CIFAR-10 from its official source "
                f"({CIFAR_SOURCE}, or torchvision.datasets.CIFAR10(root, download=True) on a "
                f"machine with internet), and point data.root at the folder holding "
                f"cifar-10-batches-py/."
            )
        return allowed


def _not_cifar(path: Path, problem: str) -> UserError:
    return UserError(
        f"Cannot read {path} as a CIFAR-10 batch: {problem}. The file is damaged or not from "
        f"the CIFAR-10 python version: get it again from its official source ({CIFAR_SOURCE}) "
        f"and point data.root at the folder holding cifar-10-batches-py/."
    )


def _unpickle_cifar(path: Path, keys: tuple[bytes, ...]) -> dict:
    try:
        with open(path, "rb") as f:
            content = _CifarUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as err:  # anything unpickling raises comes from the file's bytes
        raise _not_cifar(path, f"{type(err).__name__}: {err}") from None
    missing = [k.decode() for k in keys if not isinstance(content, dict) or k not in content]
    if missing:
        raise _not_cifar(path, f"it lacks the entries {', '.join(missing)}")
    return content


def _read_cifar(folder: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    # Read the pickles directly: torchvision's CIFAR10 checks the md5 of every file, so it rejects
    # anything but the exact upstream archive (re-pickled copies, subsets, test fixtures).
    def batches(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            part = _unpickle_cifar(folder / name, (b"data", b"labels"))
            try:
                images.append(np.asarray(part[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(part[b"labels"], dtype=np.int64).reshape(-1))
            except (TypeError, ValueError) as err:
                raise _not_cifar(folder / name, f"{type(err).__name__}: {err}") from None
            if len(images[-1]) != len(labels[-1]):
                problem = f"it has {len(images[-1])} images but {len(labels[-1])} labels"
                raise _not_cifar(folder / name, problem)
        return np.concatenate(images), np.concatenate(labels)

    arrays = {"train": batches(CIFAR_FILES[:5]), "test": batches(["test_batch"])}
    meta = _unpickle_cifar(folder / "batches.meta", (b"label_names",))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    return arrays, names


class TorchvisionDataModule(TensorDataModule):
    """MNIST, Fashion-MNIST or CIFAR-10 from torchvision's on-disk layout under `root`.

    The official test set is the test split; validation is a stratified `val_fraction` of the
    official training set. Pixels are scaled to [0, 1], then standardized per channel.
    """

    def __init__(
        self,
        dataset: str,
        root: str,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, 0.0, split_seed, seed)
        self.dataset = dataset
        self.root = root

    def check_files(self) -> Path:
        """The folder holding the dataset files; UserError naming every missing file otherwise."""
        # Checked here, not in __init__: Hydra's instantiate() wraps errors raised while
        # constructing, and the CLI would show a traceback instead of this message.
        if self.dataset not in LAYOUTS:
            raise choice_error("vision dataset", self.dataset, LAYOUTS)
        root = Path(self.root).expanduser().resolve()
        sub, files, fetcher = LAYOUTS[self.dataset]
        folder = root / sub
        missing = [f for f in files if not (folder / f).exists()]
        if self.dataset != "cifar10":
            missing = [f for f in missing if not (folder / f"{f}.gz").exists()]
        if not missing:
            return folder
        state = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
        gz = " (each may also be gzipped, ending in .gz)" if self.dataset != "cifar10" else ""
        raise UserError(
            f"Cannot load {self.dataset}: the data root {root} {state}. nnlab expects the files "
            f"{', '.join(files)} in {folder}/{gz}. nnlab never downloads data: fetch them with "
            f"torchvision.datasets.{fetcher}('{root}', download=True) on a machine with internet "
            f"and copy them here, or point nnlab at the directory that holds {sub.split('/')[0]}/ "
            f"with data.root=/path/to/dir."
        )

    def load(self) -> None:
        folder = self.check_files()
        if self.dataset == "cifar10":
            arrays, names = _read_cifar(folder)
        else:
            arrays = {
                split: (
                    _read_idx(folder / f"{prefix}-images-idx3-ubyte")[:, None],
                    _read_idx(folder / f"{prefix}-labels-idx1-ubyte").astype(np.int64),
                )
                for split, prefix in (("train", "train"), ("test", "t10k"))
            }
            names = [str(i) for i in range(10)]
            if self.dataset == "fashion_mnist":
                names = list(datasets.FashionMNIST.classes)
        x, y = (torch.as_tensor(a) for a in arrays["train"])
        x_test, y_test = (torch.as_tensor(a) for a in arrays["test"])
        # Split while still uint8: 4x less memory than splitting the float copy of the whole set.
        train, val = _carve(x, y, self.val_fraction, self.split_seed)
        splits = {
            name: (xs.float().div_(255.0), ys)
            for name, (xs, ys) in (("train", train), ("val", val), ("test", (x_test, y_test)))
        }
        self.splits = self.standardize(splits, dims=(0, 2, 3))
        self.class_names = names


class ImageFiles:
    """Image files and their class indices, each read as a (channels, size, size) uint8 array.

    The paths live in one byte buffer, not a list of strings: DataLoader workers fork with the
    dataset, and touching a Python object (its reference count) copies the memory page it sits
    on, so a list of a million paths would be copied into every worker bit by bit.
    """

    def __init__(self, paths: list[str], labels: np.ndarray, size: int, grayscale: bool) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self.offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.size, self.grayscale = size, grayscale
        self.shape = (1 if grayscale else 3, size, size)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, index: int) -> str:
        return os.fsdecode(self.buffer[self.offsets[index] : self.offsets[index + 1]].tobytes())

    def read(self, index: int) -> np.ndarray:
        return read_square(self.name(index), self.size, self.grayscale)

    def subset(self, indices: np.ndarray) -> ImageFiles:
        names = [self.name(int(i)) for i in indices]
        return ImageFiles(names, self.labels.numpy()[indices], self.size, self.grayscale)


class ImageFolderDataModule(TensorDataModule):
    """Images in class subfolders (root/<class>/<image>), or pre-split in root/train, val, test.

    Splits missing on disk are carved from the training images, stratified by class. Held in
    memory as standardized float tensors when they fit (`in_memory`), else streamed from disk
    in batches decoded by `workers` DataLoader workers (see docs/streaming.md). Both ways
    give the same splits, statistics and batches. Unreadable images are refused by name, or
    left out with `skip_bad` and listed in `skipped`.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        grayscale: bool = False,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        seed: int = 0,
        in_memory: bool | str = "auto",
        memory_limit_mb: int | None = None,
        workers: int = 0,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, split_seed, seed)
        self.root = root
        self.image_size = image_size
        self.grayscale = grayscale
        self.in_memory = in_memory
        self.memory_limit_mb = memory_limit_mb
        self.workers = workers
        self.skip_bad = skip_bad
        self.streamed = False  # decided by load(): True when the images stay on disk
        self.streams: dict[str, ImageFiles] = {}  # the streamed splits
        self.scale: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean, std)
        self.unreadable = Skipped()
        self.loaded = False

    @property
    def skipped(self) -> list[str]:
        """The files left out as unreadable (skip_bad), in the order found; streaming may find
        more while training, so read it when the run ends."""
        return list(self.unreadable.found)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1 if self.grayscale else 3, self.image_size, self.image_size)

    @property
    def variable_length(self) -> bool:
        return False

    def _layout_error(self, root: Path, problem: str) -> UserError:
        return UserError(
            f"Cannot load images from {root}: {problem}. nnlab expects one subfolder per class, "
            f"named after it, holding its images (root/<class_name>/<image>.png), or that layout "
            f"inside root/train/ and optionally root/val/ and root/test/ (root/train/<class>/..., "
            f"root/test/<class>/...). Point nnlab at such a folder with data.root=/path/to/dir."
        )

    def _list(self, folder: Path, root: Path) -> tuple[list[str], list[int], list[str]]:
        """The image files under folder/<class>/, their class numbers there, the classes."""
        try:
            # Lists the files only (by extension), decoding nothing.
            found = datasets.ImageFolder(folder, loader=str)
        except FileNotFoundError as err:
            # ImageFolder's messages cover both "no class folders" and "no images in them".
            raise self._layout_error(root, f"{folder}: {err}") from None
        paths = [path for path, _ in found.samples]
        return paths, found.targets, list(found.classes)

    def _folder(
        self, listing: tuple[list[str], list[int], list[str]], names: list[str], where: Path
    ) -> ImageFiles:
        """A folder's readable images (from its `_list`), numbered by `names`, the training
        classes: each folder numbers its own classes, from 0 in name order."""
        paths, labels, found = listing
        unknown = sorted(set(found) - set(names))
        if unknown:
            problem = f"{where} has classes the training images lack: {', '.join(unknown)}"
            raise self._layout_error(where, problem)
        number = np.asarray([names.index(c) for c in found], dtype=np.int64)
        images = ImageFiles(
            paths, number[np.asarray(labels, dtype=np.int64)], self.image_size, self.grayscale
        )
        return images.subset(check_all(paths, check_image, self.skip_bad, self.unreadable))

    def _splits(self, root: Path) -> dict[str, ImageFiles]:
        """Every split's files: the folders on disk, and what is carved from train/."""
        pre_split = (root / "train").is_dir()
        train_folder = root / "train" if pre_split else root
        listing = self._list(train_folder, root)
        # a restored run keeps its classes' numbers, whatever folders the disk holds now
        self.class_names = list(self.learned("class_names", lambda: listing[2]))
        splits = {"train": self._folder(listing, self.class_names, train_folder)}
        for split in ("val", "test"):
            if pre_split and (root / split).is_dir():
                listing = self._list(root / split, root)
                splits[split] = self._folder(listing, self.class_names, root / split)
        share = 1.0  # of the training images still in train: fractions count from the whole
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            if split not in splits:  # missing on disk: carved from the training images
                train = splits["train"]
                labels, count = train.labels.numpy(), len(train.labels)
                what = f"{count} images"
                rest, part = carve(
                    count, fraction / share, labels, self.split_seed, what, SPLIT_REMEDY
                )
                splits["train"], splits[split] = train.subset(rest), train.subset(part)
                share -= fraction
        return splits

    def _streams(self, splits: dict[str, ImageFiles]) -> bool:
        """Whether to stream: data.in_memory, or for auto whether the float tensors would
        exceed the memory budget."""
        mode = memory_mode(self.in_memory)
        if mode != "auto":
            return mode == "false"
        floats = 4 * math.prod(self.input_shape) * sum(len(s) for s in splits.values())
        return floats > memory_budget(self.memory_limit_mb)

    def load(self) -> None:
        root = Path(self.root).expanduser().resolve()
        if not root.is_dir():
            raise self._layout_error(root, "the folder does not exist")
        splits = self._splits(root)
        self.streamed = self._streams(splits)
        sample = stats_sample(len(splits["train"]), self.split_seed)
        if self.streamed:
            train = BatchReader(splits["train"], self.skip_bad)
            stats = self.learned(
                "standardize",
                lambda: measure(train, sample, self.workers, self.unreadable),
            )
            self.scale = scaling(stats, self.input_shape)
            self.streams = splits
            self.splits = NotInMemory()
        else:
            self.splits = self._hold(splits, sample)
        self.loaded = True
        self.unreadable.report()

    def _hold(
        self, splits: dict[str, ImageFiles], sample: np.ndarray
    ) -> dict[str, tuple[torch.Tensor, ...]]:
        """Every split read into memory, standardized. Each is read as uint8 into one
        preallocated tensor and turned into float in place: the peak stays near what is held
        (the float splits, and one split's uint8 bytes besides)."""
        held: dict[str, tuple[torch.Tensor, ...]] = {}
        for name, files in splits.items():  # train first: it gives the statistics
            reader = BatchReader(files, self.skip_bad)
            every = np.arange(len(files))
            x, y, kept = read_all(reader, every, self.workers, self.unreadable)
            if self.scale is None:
                rows = np.flatnonzero(np.isin(kept, sample))
                stats = self.learned("standardize", lambda x=x, rows=rows: _moments_of(x, rows))
                self.scale = scaling(stats, self.input_shape)
            held[name] = (to_float(x, *self.scale), y)
            del x  # its bytes go before the next split is read
        return held

    def setup(self, stage: str | None = None) -> None:
        if not self.loaded:
            self.load()

    def inputs(self, paths: list[str]) -> tuple[list[tuple[str, str]], torch.Tensor]:
        """Image files (or folders of them), resized and standardized as the training images."""
        files = image_files(paths)
        x = torch.empty((len(files), *self.input_shape), dtype=torch.uint8)
        for i, path in enumerate(files):
            x[i] = torch.from_numpy(read_square(path, self.image_size, self.grayscale))
        scale = scaling(self.fitted["standardize"], self.input_shape)
        return [(str(path), "") for path in files], to_float(x, *scale)

    def _batches(self, split: str, shuffle: bool | None = None) -> TensorBatches:
        if not self.streamed:
            return super()._batches(split, shuffle)
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        batches = StreamBatches(
            BatchReader(self.streams[split], self.skip_bad),
            self.batch_size,
            self.scale,
            self.unreadable,
            workers=self.workers,
            device=device,
            shuffle=split == "train" if shuffle is None else shuffle,
            seed=self.seed,
            per_step=self.steps_per_execution,
            limit=self.limits.get(split),
        )
        self.open_loaders.add(batches)
        return batches


def _moments_of(x: torch.Tensor, rows: np.ndarray) -> dict[str, list]:
    """Pixel statistics of the held uint8 samples at `rows`, a chunk at a time."""
    moments = PixelMoments()
    for start in range(0, len(rows), CHUNK):
        moments.add(x[torch.as_tensor(rows[start : start + CHUNK])])
    return moments.result(x.dim())
