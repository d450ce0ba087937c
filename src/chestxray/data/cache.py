"""The uint8 image cache: every image of the split table decoded and resized once per data version
and size, one memory-mappable array per split (``learn.inputs`` streams it to Keras)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.data import occlusion
from chestxray.data.images import load_gray
from chestxray.data.split_table import SPLITS, data_version
from chestxray.io import atomic_path, read_json, write_json
from chestxray.progress import track
from chestxray.resources import require_free_space

log = logging.getLogger(__name__)


def prepare_cache(
    split_csv: Path,
    cache_dir: Path,
    image_size: int,
    occlude: float = 0.0,
    load: Callable[[Path, int], np.ndarray] = load_gray,
) -> dict[str, Any]:
    """Decode every image of the split table once into ``<split>_x.npy`` (N, S, S, 1) uint8,
    with labels in ``<split>_y.npy`` and the row order in ``<split>.csv`` (path, label and group:
    the split table's, else the path). ``occlude`` > 0 blacks out the central box of that side in
    every image of every split (the lungs-removed audit; the data version stays). ``load(path, size)``
    gives one image as (S, S) uint8 (the benchmarks pass generated pixels)."""
    table = pd.read_csv(split_csv, keep_default_na=False)
    classes = sorted(table["label"].unique())
    index = {c: i for i, c in enumerate(classes)}
    needed = len(table) * (image_size * image_size + 8)  # pixels and label; the old cache stays until the end
    require_free_space(cache_dir, needed, f"the cache at data.image_size={image_size}", "lower it or free space")
    with atomic_path(cache_dir, is_dir=True) as tmp:
        for split in SPLITS:
            rows = table[table["split"] == split].reset_index(drop=True)
            x = np.lib.format.open_memmap(
                tmp / f"{split}_x.npy", mode="w+", dtype=np.uint8, shape=(len(rows), image_size, image_size, 1)
            )
            for i, path in enumerate(track(rows["path"], len(rows), f"cache {split}")):
                x[i, ..., 0] = load(Path(path), image_size)
                if occlude:
                    x[i] = occlusion.occlude(x[i], occlude)
            x.flush()
            del x
            np.save(tmp / f"{split}_y.npy", rows["label"].map(index).to_numpy(np.int64))
            group = rows["group"] if "group" in rows else rows["path"]  # what the bootstrap resamples
            rows[["path", "label"]].assign(group=group).to_csv(tmp / f"{split}.csv", index=False)
        meta = {
            "classes": classes,
            "image_size": image_size,
            "occlude": occlude,
            "counts": {s: int((table["split"] == s).sum()) for s in SPLITS},
            "data_version": data_version(split_csv),
        }
        write_json(tmp / "meta.json", meta)
    log.info("cached %d images at %d px in %s", len(table), image_size, cache_dir)
    return meta


def load_split(cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images memory-mapped read-only, labels) of one split."""
    return np.load(cache_dir / f"{split}_x.npy", mmap_mode="r"), np.load(cache_dir / f"{split}_y.npy")


def cache_meta(cache_dir: Path) -> dict[str, Any]:
    """Class names (index order), image size, occlusion, counts and data version of the cache."""
    return read_json(cache_dir / "meta.json")
