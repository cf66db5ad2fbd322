"""Every image file nnlab reads (predict inputs, image folders, COCO images) is opened here.

Such files may come from anyone, so an image is refused, with a UserError naming it, unless it
is in a format nnlab documents and small enough to decode safely. Pillow opens lazily: the
header, a few bytes stating the size, is read first and checked before any pixel is decoded.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from nnlab.errors import UserError

# 64 megapixels: above every common camera sensor (up to ~61 MP) and an 8K frame (33 MP), while
# the largest image allowed still decodes in about 1 GB (3 bytes a pixel as RGB, 12 more as the
# float tensor predict builds). A header states the size in a few bytes, so a 50 kB PNG can claim
# 20000 × 20000 pixels: 1.2 GB decoded, 4.8 GB as floats. Pillow's own guard only warns below
# 179 MP: a 13000 × 13000 file (169 MP, 2 GB as floats) passes it.
MAX_IMAGE_PIXELS = 64_000_000
PIXELS_ENV = "NNLAB_MAX_IMAGE_PIXELS"  # raises the limit for genuinely large images

# Decoders for the formats nnlab documents. Pillow otherwise picks one from the file's content,
# whatever its name: an "image.png" holding PostScript would go to Ghostscript, a program.
# JPEG covers the multi-picture JPEGs (MPO) of many phone cameras; PPM covers PGM and PBM.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def max_image_pixels() -> int:
    """The pixel limit: NNLAB_MAX_IMAGE_PIXELS when set, else MAX_IMAGE_PIXELS."""
    given = os.environ.get(PIXELS_ENV, "").strip()
    if not given:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(given.replace("_", ""))
    except ValueError:
        limit = 0
    if limit <= 0:
        raise UserError(
            f"{PIXELS_ENV}={given!r} is not a positive whole number of pixels. Unset it to use "
            f"the default limit of {MAX_IMAGE_PIXELS:,} pixels, or give e.g. "
            f"{PIXELS_ENV}=100000000."
        )
    return limit


def _too_large(path: Path, size: str, limit: int) -> UserError:
    return UserError(
        f"Refusing to read {path}: it is {size}, more than nnlab's limit of {limit:,} pixels per "
        f"image. Decoding it would take gigabytes of memory, and a file this small stating such "
        f"a size is often made to exhaust memory. Resize the image (or split it into tiles), or, "
        f"if you trust it and have the memory, raise the limit with {PIXELS_ENV}=<pixels>."
    )


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """The image at `path`, opened but not decoded, its format and size checked; UserError
    naming the file when it is too large, in another format, damaged or cut short (also when
    decoding it inside the `with` fails)."""
    path = Path(path)
    limit = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        # The user raised nnlab's limit above Pillow's: let nnlab's be the one that applies.
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; nnlab's is lower and refuses with a message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=FORMATS)
        with image:
            width, height = image.size
            if width * height > limit:
                raise _too_large(path, f"{width} × {height} = {width * height:,} pixels", limit)
            yield image
    except Image.DecompressionBombError as err:
        # Past twice its own limit Pillow refuses in open(), before nnlab sees the size; its
        # message gives the pixel count ("Image size (400000000 pixels) exceeds limit ...").
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found[1]):,} pixels" if found else "larger than Pillow opens"
        raise _too_large(path, size, limit) from None
    except Image.UnidentifiedImageError:
        raise UserError(
            f"Cannot read {path} as an image: it is not a file in a format nnlab decodes "
            f"({', '.join(FORMATS)}). Convert it to PNG or JPEG, or remove it."
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        # Pillow reports damaged or truncated pixel data as OSError ("image file is truncated"),
        # and a few broken headers as ValueError or SyntaxError.
        raise UserError(
            f"Cannot read {path} as an image ({err}): it is damaged, cut short or unreadable. "
            f"Replace it with an intact copy, or remove it."
        ) from None


def check_image(path: str | Path) -> None:
    """Refuse (UserError) an image `read_rgb` would refuse for its format or size, reading only
    its header: cheap enough to check every input before any work starts."""
    with open_image(path):
        pass


def read_rgb(path: str | Path) -> Image.Image:
    """The image at `path`, decoded as RGB, refused as `open_image` says."""
    with open_image(path) as image:
        return image.convert("RGB")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header alone, refused as `check_image` says."""
    with open_image(path) as image:
        return image.size


def read_square(path: str | Path, size: int, grayscale: bool = False) -> np.ndarray:
    """The image at `path` decoded as RGB (then grey when `grayscale`), resized to size × size:
    a (channels, size, size) uint8 array; refused as `open_image` says."""
    with open_image(path) as image:
        rgb = image.convert("RGB")  # decodes: a file cut short fails here, inside the checks
    # Bilinear with antialiasing, as torchvision's Resize does on a Pillow image.
    square = rgb.resize((size, size), Image.Resampling.BILINEAR)
    if grayscale:
        return np.asarray(square.convert("L"))[None]
    return np.asarray(square).transpose(2, 0, 1)


def image_files(paths: list[str]) -> list[Path]:
    """Every image named, or inside a named folder (not recursive), in a stable order."""
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UserError(
                    f"The folder {path} holds no images (looked for "
                    f"{', '.join(IMAGE_SUFFIXES)}). Give image files or a folder of them."
                )
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(
                f"No such image file or folder: {given}. Give image files (png, jpg, ...) or "
                f"folders of them, e.g. nnlab predict latest photo.jpg more_photos/."
            )
    if not found:
        raise UserError("Give at least one image file or folder to predict on.")
    # A file named on its own and again through its folder is predicted once.
    return list({p.resolve(): p for p in found}.values())
