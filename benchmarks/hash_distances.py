"""Benchmark: how many bits apart the project's perceptual hashes put distinct X-rays and edited copies.

    python benchmarks/hash_distances.py [--sample DIR]

On the real images of ../shared/data/covid19-radiography-sample (111 PNGs, 299×299), hashed as
validate hashes them (``data.images.inspect`` → its 256-bit ``phash``): the Hamming distance of
every pair of distinct images, and of each image to copies of it made by ``EDITS``. Each copy is
made from the image's 8-bit grey pixels, written to a file (BMP, lossless and quick to write, or
JPEG where named) and inspected like any other file. The edits come in four groups:

- ``copies``: resized there and back (299→224→299, 299→150→299) or up (299→512), Pillow's bicubic
  filter; re-encoded as JPEG at quality 90 or 75;
- ``contrast_gamma``: gamma 0.8 and 1.25; contrast ±20 % (distances from the image's mean grey
  scaled by 1.2 or 0.8, Pillow's ``ImageEnhance.Contrast``);
- ``strong``: gamma 0.7 and 1.5, contrast +30 %, JPEG quality 50, histogram equalisation;
- ``geometric``: a 3 % or 5 % border cropped and the rest resized back, a 5 px shift, a 2° rotation.

For each edit and group: the smallest, median and largest distance, and how many copies lie beyond
``validate.near_duplicate_distance`` (the split's: copies it does not join) and beyond
``audit.near_duplicate_distance``. Prints the figures and writes them to
benchmarks/results/hash_distances.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import PIL
from PIL import Image, ImageEnhance, ImageOps

from chestxray.config import load_params
from chestxray.data.duplicates import hash_words
from chestxray.data.images import inspect, to_gray
from chestxray.io import write_json

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared/data/covid19-radiography-sample"
OUT = ROOT / "benchmarks/results/hash_distances.json"
log = logging.getLogger("benchmark")

Edit = Callable[[Image.Image], Image.Image]


def resized(*sides: int) -> Edit:
    """Resize to each side in turn (square, bicubic)."""

    def edit(im: Image.Image) -> Image.Image:
        for side in sides:
            im = im.resize((side, side), Image.Resampling.BICUBIC)
        return im

    return edit


def gamma(power: float) -> Edit:
    """Grey levels v → 255 · (v / 255) ** power."""
    table = [round(255 * (v / 255) ** power) for v in range(256)]
    return lambda im: im.point(table)


def contrast(factor: float) -> Edit:
    """Distances from the image's mean grey scaled by ``factor`` (Pillow's ``ImageEnhance.Contrast``)."""
    return lambda im: ImageEnhance.Contrast(im).enhance(factor)


def cropped(fraction: float) -> Edit:
    """A border of ``fraction`` of the side cropped on every side, the rest resized back (bicubic)."""

    def edit(im: Image.Image) -> Image.Image:
        cut = round(im.width * fraction)
        box = (cut, cut, im.width - cut, im.height - cut)
        return im.crop(box).resize(im.size, Image.Resampling.BICUBIC)

    return edit


def shifted(pixels: int) -> Edit:
    """The content moved ``pixels`` up and left, the edges filled with black."""
    return lambda im: im.transform(im.size, Image.Transform.AFFINE, (1, 0, pixels, 0, 1, pixels))


def unchanged(im: Image.Image) -> Image.Image:
    """The pixels as they are (for re-encoding)."""
    return im


# name → (group, edit, JPEG quality or None for a lossless BMP)
EDITS: dict[str, tuple[str, Edit, int | None]] = {
    "resize_299_224_299": ("copies", resized(224, 299), None),
    "resize_299_150_299": ("copies", resized(150, 299), None),
    "resize_299_512": ("copies", resized(512), None),
    "jpeg_q90": ("copies", unchanged, 90),
    "jpeg_q75": ("copies", unchanged, 75),
    "gamma_0.8": ("contrast_gamma", gamma(0.8), None),
    "gamma_1.25": ("contrast_gamma", gamma(1.25), None),
    "contrast_+20": ("contrast_gamma", contrast(1.2), None),
    "contrast_-20": ("contrast_gamma", contrast(0.8), None),
    "gamma_0.7": ("strong", gamma(0.7), None),
    "gamma_1.5": ("strong", gamma(1.5), None),
    "contrast_+30": ("strong", contrast(1.3), None),
    "jpeg_q50": ("strong", unchanged, 50),
    "equalize": ("strong", ImageOps.equalize, None),
    "crop_3pct": ("geometric", cropped(0.03), None),
    "crop_5pct": ("geometric", cropped(0.05), None),
    "shift_5px": ("geometric", shifted(5), None),
    "rotate_2deg": ("geometric", lambda im: im.rotate(2, resample=Image.Resampling.BILINEAR), None),
}


def measure(
    sample: Path, split_distance: int, audit_distance: int, names: Sequence[str] = tuple(EDITS)
) -> dict[str, Any]:
    """The distances between the sample's distinct images and to each image's copies made by the
    ``EDITS`` named (see the module's docstring), as the JSON this benchmark writes."""
    files = sorted(p for p in sample.rglob("*") if p.suffix.lower() == ".png")
    hashes = [inspect(f).phash for f in files]
    words = hash_words(hashes)
    pairwise = sum(np.bitwise_count(words[:, None, w] ^ words[None, :, w]).astype(int) for w in range(words.shape[1]))
    distinct = pairwise[np.triu_indices(len(files), 1)]
    nearest_other = np.where(np.eye(len(files), dtype=bool), 257, pairwise).min(axis=1)
    edits, groups = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-hash-") as tmp:
        for name in names:
            group, edit, quality = EDITS[name]
            copy = Path(tmp) / ("copy.bmp" if quality is None else "copy.jpg")
            distances = []
            for file, original in zip(files, words, strict=True):
                with Image.open(file) as im:
                    edit(to_gray(im)).save(copy, **({} if quality is None else {"quality": quality}))
                edited = hash_words([inspect(copy).phash])[0]
                distances.append(int(np.bitwise_count(original ^ edited).sum()))
            edits[name] = {"group": group, **_stats(np.array(distances), split_distance, audit_distance)}
            groups.setdefault(group, []).extend(distances)
            log.info("%s: %s", name, edits[name])
    return {
        "images": len(files),
        "distinct_pairs": {
            "n": len(distinct),
            **_range(distinct),
            "p01": int(np.percentile(distinct, 1, method="inverted_cdf")),
        },
        "nearest_other_image": _range(nearest_other),
        "split_distance": split_distance,
        "audit_distance": audit_distance,
        "groups": {group: _stats(np.array(d), split_distance, audit_distance) for group, d in groups.items()},
        "edits": edits,
    }


def _range(distances: np.ndarray) -> dict[str, int]:
    return {"min": int(distances.min()), "median": int(np.median(distances)), "max": int(distances.max())}


def _stats(distances: np.ndarray, split_distance: int, audit_distance: int) -> dict[str, int]:
    return {
        "n": len(distances),
        **_range(distances),
        "beyond_split_distance": int((distances > split_distance).sum()),
        "beyond_audit_distance": int((distances > audit_distance).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(ROOT / "params.yaml")
    result = {
        "sample": "covid19-radiography-sample" if args.sample == SAMPLE else str(args.sample),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "imagehash": imagehash.__version__,
        "numpy": np.__version__,
        **measure(args.sample, params.validate_.near_duplicate_distance, params.audit.near_duplicate_distance),
    }
    write_json(OUT, result)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
