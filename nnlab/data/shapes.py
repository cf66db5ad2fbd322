"""A synthetic detection dataset: circles, squares and triangles on noisy backgrounds.

Generated from `data_seed` (same seed, same images), so it needs no download and every split is
fixed. Shapes never overlap, so each box is exactly the tight box of its shape's pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from nnlab.data.detection import DetectionBatches, DetectionDataModule
from nnlab.errors import UserError

CLASSES = ("circle", "square", "triangle")  # labels 1, 2, 3 (0 is the background)
NOISE = 12  # ± grey levels of uniform pixel noise, so flat colour alone is not the cue
MIN_CONTRAST = 200  # least L1 distance (of 765) between a shape's colour and the background
ATTEMPTS = 50  # placements tried per shape before the image settles for fewer shapes
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def shape_mask(kind: str, size: int) -> np.ndarray:
    """A size×size boolean mask of one shape; pixels count when their centre is inside."""
    centre = np.arange(size) + 0.5
    y, x = np.meshgrid(centre, centre, indexing="ij")
    half = size / 2
    if kind == "circle":
        return (x - half) ** 2 + (y - half) ** 2 <= half**2
    if kind == "square":
        return np.ones((size, size), dtype=bool)
    if kind == "triangle":  # apex at the top centre, base along the bottom edge
        return y >= 2 * np.abs(x - half)
    raise ValueError(kind)


def _colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() >= MIN_CONTRAST:
            return colour


def generate_shapes(
    n: int,
    rng: np.random.Generator,
    image_size: int = 128,
    min_objects: int = 1,
    max_objects: int = 4,
    min_object_size: int = 12,
    max_object_size: int = 48,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` images (uint8, (n, 3, S, S)), boxes ((n, max_objects, 4): x0, y0, x1, y1 pixel
    edges, so a shape covering columns 3..9 has x0=3, x1=10) and labels ((n, max_objects),
    1..3, 0 where an image has fewer shapes)."""
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    boxes = np.zeros((n, max_objects, 4), dtype=np.float32)
    labels = np.zeros((n, max_objects), dtype=np.int64)
    for i in range(n):
        background = rng.integers(0, 256, size=3)
        canvas = np.broadcast_to(background[:, None, None], (3, image_size, image_size)).copy()
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(rng.integers(min_objects, max_objects + 1)):
            label = int(rng.integers(len(CLASSES)))
            size = int(rng.integers(min_object_size, max_object_size + 1))
            mask = shape_mask(CLASSES[label], size)
            rows, cols = np.nonzero(mask)
            for _ in range(ATTEMPTS):
                top, left = rng.integers(0, image_size - size + 1, size=2)
                box = (
                    left + cols.min(),
                    top + rows.min(),
                    left + cols.max() + 1,
                    top + rows.max() + 1,
                )
                # One pixel of gap: touching shapes of one colour would merge into one blob.
                if all(
                    box[0] > b[2] or b[0] > box[2] or box[1] > b[3] or b[1] > box[3] for b in placed
                ):
                    break
            else:
                continue
            window = canvas[:, top : top + size, left : left + size]
            window[:, mask] = _colour(rng, background)[:, None]
            boxes[i, len(placed)] = box
            labels[i, len(placed)] = label + 1
            placed.append(box)
        noise = rng.integers(-NOISE, NOISE + 1, size=canvas.shape)
        images[i] = np.clip(canvas + noise, 0, 255)
    return torch.from_numpy(images), torch.from_numpy(boxes), torch.from_numpy(labels)


class ShapesDataModule(DetectionDataModule):
    """Seeded synthetic shapes, split into fixed train/val/test sets of the given sizes."""

    def __init__(
        self,
        image_size: int = 128,
        train_images: int = 2000,
        val_images: int = 200,
        test_images: int = 200,
        min_objects: int = 1,
        max_objects: int = 4,
        min_object_size: int = 12,
        max_object_size: int = 48,
        data_seed: int = 0,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, seed)
        self.image_size = image_size
        self.sizes = {"train": train_images, "val": val_images, "test": test_images}
        self.objects = (min_objects, max_objects)
        self.object_sizes = (min_object_size, max_object_size)
        self.data_seed = data_seed
        self.splits: dict[str, tuple[torch.Tensor, ...]] = {}
        self.class_names = list(CLASSES)

    def _check(self) -> None:
        # Checked here, not in __init__: Hydra wraps what constructors raise.
        low, high = self.object_sizes
        if not 3 <= low <= high <= self.image_size:
            raise UserError(
                f"Bad shape sizes: data.min_object_size={low}, data.max_object_size={high} with "
                f"data.image_size={self.image_size}. They must satisfy 3 ≤ min_object_size ≤ "
                f"max_object_size ≤ image_size."
            )
        if self.objects[0] > self.objects[1]:
            raise UserError(
                f"data.min_objects={self.objects[0]} is more than "
                f"data.max_objects={self.objects[1]}."
            )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self._check()
        for split, n in self.sizes.items():
            # One generator per split: changing the training set's size leaves val/test alone.
            rng = np.random.default_rng([self.data_seed, SPLIT_IDS[split]])
            self.splits[split] = generate_shapes(
                n, rng, self.image_size, *self.objects, *self.object_sizes
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def train_dataloader(self) -> DetectionBatches:
        batches = DetectionBatches(
            self.splits["train"], self.batch_size, shuffle=True, seed=self.seed
        )
        return batches.following(self.trainer)

    def val_dataloader(self) -> DetectionBatches:
        return DetectionBatches(self.splits["val"], self.batch_size)

    def test_dataloader(self) -> DetectionBatches:
        return DetectionBatches(self.splits["test"], self.batch_size)
