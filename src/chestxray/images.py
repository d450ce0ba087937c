"""Decode images by content (not by extension) and normalise any mode to 8-bit grey."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class ImageInfo:
    """What decoding found: the format by content, size and mode; ``error`` names why it failed
    (``missing_file``, ``not_an_image``, ``corrupt_image``)."""

    format: str | None
    width: int
    height: int
    mode: str | None
    error: str | None = None


def inspect(path: Path) -> ImageInfo:
    """Fully decode ``path`` and report what it holds; never raises for bad image data."""
    try:
        with Image.open(path) as im:
            im.load()
            return ImageInfo(im.format, im.width, im.height, im.mode)
    except FileNotFoundError:
        return ImageInfo(None, 0, 0, None, "missing_file")
    except UnidentifiedImageError:
        return ImageInfo(None, 0, 0, None, "not_an_image")
    except (OSError, SyntaxError, ValueError):  # truncated or corrupt data
        return ImageInfo(None, 0, 0, None, "corrupt_image")


def to_gray(im: Image.Image) -> Image.Image:
    """Any mode → 8-bit grey ("L"); high-bit-depth images are stretched to their own range."""
    if im.mode in HIGH_BIT_MODES:
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(arr).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("L")


def load_gray(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` to a (size, size) uint8 grey array (bilinear with antialiasing)."""
    with Image.open(path) as im:
        gray = to_gray(im)
    return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.uint8)
