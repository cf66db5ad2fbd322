"""Image datasets read from disk: torchvision's MNIST/Fashion-MNIST/CIFAR-10 layouts, ImageFolder.

Nothing here ever downloads: the machines nnlab runs on may have no internet, and a silent
multi-hundred-megabyte fetch inside a training command is a surprise nobody wants.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torchvision import datasets, transforms

from nnlab.data.base import TensorDataModule, standardize
from nnlab.errors import UserError, choice_error
from nnlab.images import read_rgb

Pair = tuple[torch.Tensor, torch.Tensor]

MNIST_FILES = [f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
# dataset -> (folder under root, expected files, torchvision class that fetches them)
LAYOUTS = {
    "mnist": ("MNIST/raw", MNIST_FILES, "MNIST"),
    "fashion_mnist": ("FashionMNIST/raw", MNIST_FILES, "FashionMNIST"),
    "cifar10": ("cifar-10-batches-py", CIFAR_FILES, "CIFAR10"),
}


def _split_error(err: ValueError, n: int, labels: np.ndarray) -> UserError:
    # sklearn's stratified split fails on tiny datasets with a message about "test_size"; say
    # instead which data and fractions did not fit.
    classes = len(np.unique(labels))
    return UserError(
        f"Cannot split {n} images of {classes} classes into stratified train/val/test parts "
        f"({err}). Use more images per class or larger data.val_fraction/data.test_fraction."
    )


def _carve(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int) -> tuple[Pair, Pair]:
    """Split (x, y) into a stratified (rest, part) pair; `fraction` of it goes to `part`."""
    labels = y.numpy()
    try:
        rest, part = train_test_split(
            np.arange(len(y)), test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as err:
        raise _split_error(err, len(y), labels) from None
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
        self.splits = standardize(splits, dims=(0, 2, 3))
        self.class_names = names


class ImageFolderDataModule(TensorDataModule):
    """Images in class subfolders (root/<class>/<image>), or pre-split in root/train, val, test.

    Splits missing on disk are carved from the training images, stratified by class.
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
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, split_seed, seed)
        self.root = root
        self.image_size = image_size
        self.grayscale = grayscale

    def _layout_error(self, root: Path, problem: str) -> UserError:
        return UserError(
            f"Cannot load images from {root}: {problem}. nnlab expects one subfolder per class, "
            f"named after it, holding its images (root/<class_name>/<image>.png), or that layout "
            f"inside root/train/ and optionally root/val/ and root/test/ (root/train/<class>/..., "
            f"root/test/<class>/...). Point nnlab at such a folder with data.root=/path/to/dir."
        )

    def _read(self, folder: Path, root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        steps = [transforms.Resize((self.image_size, self.image_size))]
        if self.grayscale:
            steps.append(transforms.Grayscale(1))
        try:
            ds = datasets.ImageFolder(
                folder,
                transform=transforms.Compose(steps + [transforms.ToTensor()]),
                loader=read_rgb,  # size and format checked before decoding
            )
        except FileNotFoundError as err:
            # ImageFolder's messages cover both "no class folders" and "no images in them".
            raise self._layout_error(root, f"{folder}: {err}") from None
        x = torch.stack([image for image, _ in ds])
        return x, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)

    def load(self) -> None:
        root = Path(self.root).expanduser().resolve()
        if not root.is_dir():
            raise self._layout_error(root, "the folder does not exist")
        pre_split = (root / "train").is_dir()
        x, y, names = self._read(root / "train" if pre_split else root, root)
        splits = {"train": (x, y)}
        for split in ("val", "test"):
            if pre_split and (root / split).is_dir():
                xs, ys, found = self._read(root / split, root)
                unknown = sorted(set(found) - set(names))
                if unknown:
                    problem = f"{split}/ has classes missing from train/: {', '.join(unknown)}"
                    raise self._layout_error(root, problem)
                # Each ImageFolder numbers its own classes; renumber by the training classes.
                splits[split] = (xs, torch.tensor([names.index(c) for c in found])[ys])
        share = 1.0  # of the training images still in train: fractions count from the whole
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            if split not in splits:  # missing on disk: carved from the training images
                train = splits["train"]
                splits["train"], splits[split] = _carve(*train, fraction / share, self.split_seed)
                share -= fraction
        self.splits = standardize(splits, dims=(0, 2, 3))
        self.class_names = names
