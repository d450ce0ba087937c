"""Decode images by content (not by extension), measure them once, normalise any mode to 8-bit grey."""

from __future__ import annotations

import functools
import hashlib
import io
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from chestxray.progress import track

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # image files, by name
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# 16×16 DCT bits = 256-bit perceptual hashes: resized or re-encoded copies differ by ≤ 6 bits
# (benchmarks/hash_distances.py)
PHASH_SIZE = 16


@dataclass(frozen=True)
class ImageInfo:
    """What one decode of a file found. ``format`` is by content (a PNG named .jpg is PNG); ``mean``
    and ``std`` are of its 8-bit grey pixels; ``phash`` is a 256-bit perceptual hash (64 hex
    digits). ``error`` names why it failed (``missing_file``, ``empty_file``, ``not_an_image``,
    ``corrupt_image``, ``too_large``); the other fields are then empty."""

    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    mean: float | None = None
    std: float | None = None
    sha256: str | None = None
    phash: str | None = None
    error: str | None = None
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)  # (size, size) when asked for


def inspect(path: Path, size: int | None = None) -> ImageInfo:
    """Read ``path`` once: hash its bytes, fully decode it, measure it, and with ``size`` keep its pixels
    as ``load_gray`` gives them (from the same decode); never raises for bad data."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return ImageInfo(error="missing_file")
    if not data:
        return ImageInfo(error="empty_file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            gray = to_gray(im)
            info = {"format": im.format, "width": im.width, "height": im.height, "mode": im.mode}
    except UnidentifiedImageError:
        return ImageInfo(error="not_an_image")
    except Image.DecompressionBombError:  # > 2 × PIL's MAX_IMAGE_PIXELS
        return ImageInfo(error="too_large")
    except (OSError, SyntaxError, ValueError, EOFError):  # truncated or corrupt data
        return ImageInfo(error="corrupt_image")
    pixels = np.asarray(gray, dtype=np.float64)
    return ImageInfo(
        **info,
        mean=round(float(pixels.mean()), 3),
        std=round(float(pixels.std()), 3),
        sha256=hashlib.sha256(data).hexdigest(),
        phash=str(imagehash.phash(gray, hash_size=PHASH_SIZE)),
        pixels=None if size is None else resized(gray, size),
    )


def inspect_all(paths: Sequence[str], workers: int | None = None, size: int | None = None) -> list[ImageInfo]:
    """``inspect`` every path (with ``size``), in order, in ``workers`` processes (default: one per CPU).
    The processes are spawned, so a script calling this needs an ``if __name__ == "__main__":`` guard."""
    files = [Path(p) for p in paths]
    one = functools.partial(inspect, size=size)
    workers = workers or len(os.sched_getaffinity(0))
    if workers == 1:
        return list(track(map(one, files), len(files), "inspect"))
    # spawn, not fork: the caller may hold TensorFlow or other threads that a forked child would inherit mid-lock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(track(pool.map(one, files, chunksize=32), len(files), "inspect"))


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


def load_gray(source: Path | BinaryIO, size: int) -> np.ndarray:
    """Decode ``source`` (a path or an open binary file) to a (size, size) uint8 grey array
    (bilinear with antialiasing)."""
    with Image.open(source) as im:
        return resized(to_gray(im), size)


def resized(gray: Image.Image, size: int) -> np.ndarray:
    """A grey image as the model sees it: (size, size) uint8, bilinear with antialiasing."""
    return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.uint8)
