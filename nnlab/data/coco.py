"""Any COCO-format detection dataset on disk: an images folder and an annotations JSON.

Images are decoded once and kept (uint8) when they fit in memory (data.in_memory), else read
from disk batch by batch (a COCO-sized set does not fit in memory); class count and names come
from the annotations' categories, renumbered 1..K in order of category id (0 is background).
Without separate validation/test annotation files, both are carved from the training images.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor

from nnlab.data.base import EpochShuffle
from nnlab.data.detection import CROWD_BOXES, CROWD_LABELS, DetectionDataModule, Target
from nnlab.data.streaming import memory_budget, memory_mode
from nnlab.errors import Notice, UserError
from nnlab.images import image_size, read_rgb

Record = tuple[Path, Target]  # an image file and its boxes and labels


def _collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    # Images differ in size: a list, which torchvision's detector resizes and pads itself.
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def _read(path: Path) -> torch.Tensor:
    """An image as a (3, height, width) uint8 tensor."""
    return pil_to_tensor(read_rgb(path))


class CocoImages(Dataset):
    """(image in [0, 1], target) pairs, read from disk on demand or taken from `cache` (the
    images decoded once, kept as uint8)."""

    def __init__(self, records: list[Record], cache: list[torch.Tensor] | None = None) -> None:
        self.records = records
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        path, target = self.records[index]
        image = self.cache[index] if self.cache is not None else _read(path)
        return image.float().div_(255.0), target


class _Decoded(Dataset):
    """The records' images as uint8 tensors: what the cache is filled from, in workers."""

    def __init__(self, records: list[Record]) -> None:
        self.paths = [path for path, _ in records]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return _read(self.paths[index])


def _layout_error(what: str, problem: str) -> UserError:
    return UserError(
        f"Cannot load the COCO dataset: {what} {problem}. nnlab expects the images in "
        f"<data.root>/<data.images>/ (default images/) and a COCO-format annotations JSON, with "
        f"'images' (id, file_name), 'annotations' (image_id, category_id, bbox as [x, y, width, "
        f"height]) and 'categories' (id, name), at <data.root>/<data.annotations> (default "
        f"annotations.json). Point nnlab at it with data.root=/path/to/dataset, and "
        f"data.images=... data.annotations=... if your names differ (e.g. "
        f"data.images=train2017 data.annotations=annotations/instances_train2017.json)."
    )


def _load(annotations: Path, images: Path) -> tuple[dict[int, str], dict[int, str], list[Any]]:
    """A COCO JSON's images (id → file name), categories (id → name) and annotations."""
    if not annotations.is_file():
        raise _layout_error(f"the annotations file {annotations}", "does not exist")
    if not images.is_dir():
        raise _layout_error(f"the images folder {images}", "does not exist")
    try:
        coco: dict[str, Any] = json.loads(annotations.read_text())
        entries = {int(im["id"]): str(im["file_name"]) for im in coco["images"]}
        names_by_id = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        found = coco.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise _layout_error(
            f"the annotations file {annotations}", f"is not COCO-format JSON ({err!r})"
        ) from None
    return entries, names_by_id, found


def read_coco(
    annotations: Path, images: Path, categories: list[int] | None = None
) -> tuple[list[Record], list[int], list[str]]:
    """Records of every image in a COCO JSON, the category ids (in label order) and names.

    `categories` fixes the id → label numbering (a validation file follows the training one).
    Crowd regions go into each target's crowd_boxes / crowd_labels (for the metric, not the
    detector); boxes without area are skipped with a notice: torchvision's detector needs
    positive widths and heights.
    """
    entries, names_by_id, found = _load(annotations, images)
    if categories is None:
        categories = sorted(names_by_id)
    if not categories:
        raise _layout_error(f"the annotations file {annotations}", "lists no categories")
    label_of = {cid: i + 1 for i, cid in enumerate(categories)}
    objects = _objects_by_image(found, set(entries), label_of, annotations)
    missing = [name for name in entries.values() if not (images / name).is_file()]
    if missing:
        raise _layout_error(
            f"the images folder {images}",
            f"lacks {len(missing)} image(s) the annotations list, e.g. {', '.join(missing[:3])}",
        )
    records = [(images / name, _target(objects[i])) for i, name in sorted(entries.items())]
    names = [names_by_id.get(cid, str(cid)) for cid in categories]
    return records, categories, names


# One image's objects as lists, under the keys of its Target: boxes (x0 y0 x1 y1) and labels to
# train on, crowd regions' boxes and labels apart.
Objects = dict[str, list]


def _fields(ann: Any, annotations: Path) -> tuple[int, int, list[float]]:
    """An annotation's image id, category id and [x, y, w, h] box; UserError naming it when one
    is missing or not numbers."""
    try:
        box = [float(v) for v in ann["bbox"]]
        if len(box) != 4:
            raise ValueError(f"bbox has {len(box)} numbers, not 4")
        return int(ann["image_id"]), int(ann["category_id"]), box
    except (KeyError, TypeError, ValueError) as err:
        which = ann.get("id", "(no id)") if isinstance(ann, dict) else repr(ann)[:60]
        raise _layout_error(
            f"the annotations file {annotations}",
            f"has annotation {which} without a usable image_id, category_id and bbox "
            f"[x, y, width, height] ({type(err).__name__}: {err})",
        ) from None


def _objects_by_image(
    found: list[dict[str, Any]], image_ids: set[int], label_of: dict[int, int], annotations: Path
) -> dict[int, Objects]:
    """Each image's objects, crowd regions apart; zero-size boxes are left out and counted in a
    notice, so a dataset does not lose objects unnoticed."""
    keys = ("boxes", "labels", CROWD_BOXES, CROWD_LABELS)
    objects: dict[int, Objects] = {i: {k: [] for k in keys} for i in image_ids}
    empty: list[str] = []
    for ann in found:
        image_id, cid, (x, y, w, h) = _fields(ann, annotations)
        if image_id not in objects:
            raise UserError(
                f"The annotations file {annotations} has annotation {ann.get('id', '(no id)')} "
                f"on image id {image_id}, which its 'images' list does not have. Every "
                f"annotation's image_id must be the id of an entry in 'images': add the image "
                f"(id, file_name) or remove the annotation."
            )
        if cid not in label_of:
            raise _layout_error(
                f"the annotations file {annotations}", f"uses category id {cid}, not listed"
            )
        if w <= 0 or h <= 0:
            empty.append(str(ann.get("id", "(no id)")))
            continue
        box_key, label_key = keys[2:] if ann.get("iscrowd", 0) else keys[:2]
        objects[image_id][box_key].append([x, y, x + w, y + h])
        objects[image_id][label_key].append(label_of[cid])
    if empty:
        warnings.warn(
            f"skipped {len(empty)} annotation(s) with a zero-size box (width or height <= 0) in "
            f"{annotations}, e.g. annotation id(s) {', '.join(empty[:5])}: a box needs an area "
            f"to be learned or scored.",
            Notice,
            stacklevel=2,
        )
    return objects


def _target(objects: Objects) -> Target:
    return {
        key: torch.tensor(values, dtype=torch.float32).reshape(-1, 4)
        if key in ("boxes", CROWD_BOXES)
        else torch.tensor(values, dtype=torch.int64)
        for key, values in objects.items()
    }


class CocoDataModule(DetectionDataModule):
    """A COCO-format dataset under `root`: `images` folder, `annotations` JSON (both relative to
    root), optional separate validation/test files; otherwise val/test are carved by image."""

    def __init__(
        self,
        root: str,
        images: str = "images",
        annotations: str = "annotations.json",
        val_images: str | None = None,
        val_annotations: str | None = None,
        test_images: str | None = None,
        test_annotations: str | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        workers: int = 0,
        batch_size: int = 4,
        seed: int = 0,
        in_memory: bool | str = "auto",
        memory_limit_mb: int | None = None,
    ) -> None:
        super().__init__(batch_size, seed)
        self.root = root
        self.files = {
            "train": (images, annotations),
            "val": (val_images or images, val_annotations),
            "test": (test_images or images, test_annotations),
        }
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.split_seed = split_seed
        self.workers = workers
        self.in_memory = in_memory
        self.memory_limit_mb = memory_limit_mb
        self.records: dict[str, list[Record]] = {}
        self.cache: dict[str, list[torch.Tensor]] = {}  # split → its decoded uint8 images

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        root = Path(self.root).expanduser().resolve()
        if not root.is_dir():
            raise _layout_error(f"the data root {root}", "does not exist")
        folder, ann = self.files["train"]
        train, categories, self.class_names = read_coco(root / str(ann), root / folder)
        self.records = {"train": train}
        carve = [s for s in ("test", "val") if self.files[s][1] is None]
        for split in ("val", "test"):
            if split not in carve:
                folder, ann = self.files[split]
                self.records[split] = read_coco(root / str(ann), root / folder, categories)[0]
        if carve:
            self._carve(carve)
        if self._holds():
            self.cache = {split: self._decode(records) for split, records in self.records.items()}

    def source_ids(self) -> tuple[dict[str, int], list[int]]:
        """Without loading anything else: every annotated image's COCO id by its resolved path,
        and the category ids in label order (label k is the k-th), as the annotation files say."""
        root = Path(self.root).expanduser().resolve()
        ids: dict[str, int] = {}
        categories: list[int] = []
        for split, (folder, ann) in self.files.items():
            if ann is None:
                continue
            entries, names_by_id, _ = _load(root / str(ann), root / folder)
            ids.update({str((root / folder / name).resolve()): i for i, name in entries.items()})
            if split == "train":
                categories = sorted(names_by_id)
        return ids, categories

    def _holds(self) -> bool:
        """Whether to keep the decoded images: data.in_memory, or for auto whether their
        uint8 pixels fit the memory budget (sizes from the headers, which are checked)."""
        mode = memory_mode(self.in_memory)
        if mode != "auto":
            return mode == "true"
        sizes = [image_size(path) for records in self.records.values() for path, _ in records]
        return 3 * sum(w * h for w, h in sizes) <= memory_budget(self.memory_limit_mb)

    def _decode(self, records: list[Record]) -> list[torch.Tensor]:
        # its own generator: the global one's draws would shift the model's initialization
        generator = torch.Generator().manual_seed(0)
        images = DataLoader(
            _Decoded(records), batch_size=None, num_workers=self.workers, generator=generator
        )
        # cloned: a tensor from a worker holds a shared-memory segment (and its file) open
        return [image.clone() if self.workers else image for image in images]

    def _carve(self, splits: list[str]) -> None:
        train = self.records["train"]
        order = np.random.default_rng(self.split_seed).permutation(len(train))
        counts = {s: round(self.fractions[s] * len(train)) for s in splits}
        if any(n < 1 for n in counts.values()) or sum(counts.values()) >= len(train):
            raise UserError(
                f"Cannot carve {' and '.join(splits)} images from the {len(train)} training "
                f"images with data.val_fraction={self.fractions['val']} and "
                f"data.test_fraction={self.fractions['test']}: each needs at least one image and "
                f"some must be left to train on. Use more images, other fractions, or give "
                f"data.val_annotations / data.test_annotations files."
            )
        start = 0
        for split in splits:
            self.records[split] = [train[i] for i in order[start : start + counts[split]]]
            start += counts[split]
        self.records["train"] = [train[i] for i in order[start:]]

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        images = CocoImages(self.records[split], self.cache.get(split))
        # Shuffled by the trainer's epoch, not by one generator's draws (see EpochShuffle).
        order = EpochShuffle(len(images), self.seed, self.trainer) if shuffle else None
        workers = 0 if self.cache else self.workers  # held images need no reading
        return DataLoader(
            images,
            batch_size=self.batch_size,
            sampler=order,
            collate_fn=_collate,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
