"""The uint8 image cache (decoded and resized once per data version and size) and the tf.data
pipeline that streams it: memory-mapped, shuffled, batched, augmented on the fly, prefetched."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from chestxray.data.images import load_gray
from chestxray.data.splitting import SPLITS, data_version
from chestxray.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)


def prepare_cache(
    split_csv: Path, cache_dir: Path, image_size: int, load: Callable[[Path, int], np.ndarray] = load_gray
) -> dict[str, Any]:
    """Decode every image of the split table once into ``<split>_x.npy`` (N, S, S, 1) uint8,
    with labels in ``<split>_y.npy`` and the row order in ``<split>.csv``. ``load(path, size)``
    gives one image as (S, S) uint8 (the benchmarks pass generated pixels)."""
    table = pd.read_csv(split_csv, keep_default_na=False)
    classes = sorted(table["label"].unique())
    index = {c: i for i, c in enumerate(classes)}
    with atomic_path(cache_dir, is_dir=True) as tmp:
        for split in SPLITS:
            rows = table[table["split"] == split].reset_index(drop=True)
            x = np.lib.format.open_memmap(
                tmp / f"{split}_x.npy", mode="w+", dtype=np.uint8, shape=(len(rows), image_size, image_size, 1)
            )
            for i, path in enumerate(tqdm(rows["path"], desc=f"cache {split}", unit="img")):
                x[i, ..., 0] = load(Path(path), image_size)
            x.flush()
            del x
            np.save(tmp / f"{split}_y.npy", rows["label"].map(index).to_numpy(np.int64))
            rows[["path", "label"]].to_csv(tmp / f"{split}.csv", index=False)
        meta = {
            "classes": classes,
            "image_size": image_size,
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
    """Class names (index order), image size, counts and data version of the cache."""
    return read_json(cache_dir / "meta.json")


def make_dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int, augment=None, balanced: bool = False
):
    """A tf.data pipeline over (images, labels): batches are gathered from the memory map, so
    memory holds a few batches, never the dataset; ``augment`` is a Keras layer applied per batch.

    ``balanced`` oversamples: the classes take turns, each cycling through its own images in a
    fresh shuffled order, so every batch holds the classes in equal numbers (±1); an epoch is
    still ``len(x)`` images.
    """
    import tensorflow as tf

    size = x.shape[1]

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)
        return np.asarray(x[idx]), y[idx]

    def load(idx):
        images, labels = tf.numpy_function(gather, [idx], (tf.uint8, tf.int64), stateful=False)
        images = tf.ensure_shape(tf.cast(images, tf.float32), (None, size, size, 1))
        return images, tf.ensure_shape(labels, (None,))

    if balanced:
        groups = [np.flatnonzero(y == label) for label in np.unique(y)]
        per_class = [
            tf.data.Dataset.from_tensor_slices(g).shuffle(len(g), seed=seed + i, reshuffle_each_iteration=True).repeat()
            for i, g in enumerate(groups)
        ]
        turns = tf.data.Dataset.range(len(per_class)).repeat()
        ds = tf.data.Dataset.choose_from_datasets(per_class, turns).take(len(x))
    else:
        ds = tf.data.Dataset.range(len(x))
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        ds = ds.map(
            lambda a, b: (augment(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    return ds.prefetch(tf.data.AUTOTUNE)
