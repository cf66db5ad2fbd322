"""Tiny, learnable stand-ins for on-disk image datasets, written in their real file formats.

Plain functions rather than fixtures, so any test (or a quick manual check) can build one in a
temporary folder: `write_mnist(tmp_path)` then `TorchvisionDataModule("mnist", str(tmp_path))`.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _balanced_labels(n: int, rng: np.random.Generator, classes: int = 10) -> np.ndarray:
    # Every class appears n // classes or n // classes + 1 times, in random order.
    return rng.permutation(np.arange(n) % classes).astype(np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    # idx header: two zero bytes, type code 0x08 (uint8), the number of dims, then each dim as a
    # big-endian uint32 (hence magic 2051 for 3-d images, 2049 for 1-d labels).
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _mnist_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Dim noise plus a bright 8×5 block whose position (2 rows × 5 columns) encodes the label.
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        top, left = 4 + 12 * (int(label) // 5), 1 + 5 * (int(label) % 5)
        image[top : top + 8, left : left + 5] = rng.integers(200, 256, size=(8, 5))
    return images


def write_mnist(
    root: Path,
    folder: str = "MNIST",
    n_train: int = 60,
    n_test: int = 20,
    seed: int = 0,
    gz: bool = False,
) -> Path:
    """Write <root>/<folder>/raw/ idx files as torchvision lays them out; returns that raw folder.

    Use folder="FashionMNIST" for Fashion-MNIST; gz=True writes the .gz versions instead.
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _balanced_labels(n, rng)
        for kind, array in (("images-idx3", _mnist_images(labels, rng)), ("labels-idx1", labels)):
            data = _idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return raw


def _cifar_batch(n: int, rng: np.random.Generator, label: str) -> dict[bytes, object]:
    # Each class gets its own mean colour; the pixels scatter around it.
    labels = _balanced_labels(n, rng).astype(int)
    colours = np.linspace(20, 235, 10)
    means = np.stack([colours[labels], colours[::-1][labels], colours[(labels * 3) % 10]], axis=1)
    noise = rng.normal(0, 20, size=(n, 3, 1024))
    data = np.clip(means[:, :, None] + noise, 0, 255).astype(np.uint8).reshape(n, 3072)
    return {
        b"batch_label": label.encode(),
        b"labels": labels.tolist(),
        b"data": data,
        b"filenames": [f"image_{i}.png".encode() for i in range(n)],
    }


def write_cifar10(root: Path, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """Write <root>/cifar-10-batches-py/ pickles in CIFAR-10's format; returns that folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {
        f"data_batch_{i}": (n_train_per_batch, f"training batch {i} of 5") for i in range(1, 6)
    }
    batches["test_batch"] = (n_test, "testing batch 1 of 1")
    for name, (n, label) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(_cifar_batch(n, rng, label), f)
    meta = {
        b"num_cases_per_batch": n_train_per_batch,
        b"label_names": [name.encode() for name in CIFAR_NAMES],
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return folder


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "frog"),
    per_class: int = 8,
    size: int = 12,
    seed: int = 0,
) -> Path:
    """Write root/<class>/<i>.png, size×size RGB, coloured by class plus noise; returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        colour = np.array([255 * (k % 2), 255 * ((k // 2) % 2), 128 + 127 * ((-1) ** k)]) / 2 + 40
        for i in range(per_class):
            pixels = colour + rng.normal(0, 15, size=(size, size, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(root / name / f"{i}.png")
    return root


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A valid, all-black 1-bit PNG of width × height pixels that stays small on disk (about
    1 kB per megapixel): how an image claiming a huge size looks. Written row by row, so even
    20000 × 20000 needs no image in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then width bits of black
    packer = zlib.compressobj(9)
    rows = 256
    pixels = b"".join(packer.compress(row * min(rows, height - y)) for y in range(0, height, rows))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey, no interlace
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels + packer.flush())
        + chunk(b"IEND", b"")
    )
    return path


def repickle_cifar10(folder: Path, protocol: int, old_numpy_names: bool = False) -> None:
    """Rewrite every file of a CIFAR-10 folder (from write_cifar10) with pickle `protocol`, as
    other Python and numpy versions write them. old_numpy_names: name numpy 1's modules
    (numpy.core.*) as the original dataset does, rather than numpy 2's (numpy._core.*)."""
    for file in Path(folder).iterdir():
        with open(file, "rb") as f:
            content = pickle.load(f)  # the tests' own files: trusted
        data = pickle.dumps(content, protocol=protocol)
        if old_numpy_names:
            assert protocol < 4, "module names are plain text only before protocol 4"
            data = data.replace(b"numpy._core.", b"numpy.core.")
        file.write_bytes(data)


class RunsCode:
    """Pickled, it has the unpickler call `function(*args)`: what a malicious file does."""

    def __init__(self, function: Callable[..., object], *args: object) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.function, self.args


def plant_in_cifar_batch(file: Path, payload: object) -> None:
    """Hide `payload` in a CIFAR-10 batch file that otherwise stays intact and loadable."""
    with open(file, "rb") as f:
        batch = pickle.load(f)  # the tests' own file: trusted
    batch[b"batch_label"] = payload
    with open(file, "wb") as f:
        pickle.dump(batch, f)


def write_coco_json(
    root: Path,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict] | None = None,
) -> Path:
    """A COCO dataset from hand-written entries: root/images/<file_name> (grey images of each
    entry's width × height) and root/annotations.json; returns the JSON's path. Annotations are
    written as given, so they may point at images that are not there."""
    folder = Path(root) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for entry in images:
        pixels = np.full((entry["height"], entry["width"], 3), 90, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / entry["file_name"])
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "thing"}],
    }
    path = Path(root) / "annotations.json"
    path.write_text(json.dumps(coco))
    return path
