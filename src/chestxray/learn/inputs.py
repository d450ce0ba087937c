"""The input pipeline: the uint8 cache streamed through tf.data (memory-mapped, shuffled, batched,
augmented on the fly with Keras preprocessing layers, prefetched)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from chestxray.config import AugmentSettings


def augmenter(cfg: AugmentSettings, seed: int) -> keras.Sequential | None:
    """Keras preprocessing layers for on-the-fly augmentation, or None when all are off."""
    steps = []
    if cfg.rotation:
        steps.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="constant", seed=seed))
    if cfg.shift:
        steps.append(keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", seed=seed + 1))
    if cfg.shear:
        steps.append(keras.layers.RandomShear(cfg.shear, cfg.shear, fill_mode="constant", seed=seed + 5))
    if cfg.zoom:
        steps.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=seed + 2))
    if cfg.contrast:
        steps.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 3))
    if cfg.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed + 4))
    return keras.Sequential(steps, name="augment") if steps else None


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: keras.Layer | None = None,
    balanced: bool = False,
) -> tf.data.Dataset:
    """A tf.data pipeline over (images, labels): batches are gathered from the memory map, so
    memory holds a few batches, never the dataset; ``augment`` is a Keras layer applied per batch.

    ``balanced`` oversamples: the classes take turns, each cycling through its own images in a
    fresh shuffled order, so every batch holds the classes in equal numbers (±1); an epoch is
    still ``len(x)`` images.
    """
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
