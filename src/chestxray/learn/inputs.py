"""The input pipeline: the uint8 cache streamed through tf.data (memory-mapped, shuffled, batched,
augmented on the fly, prefetched), and the augmentation: rotation, shift, shear, zoom and flip
composed into one projective transform per image, resampled once, then contrast."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from chestxray.config import AugmentSettings

DRAWS = 8  # uniform draws per image: angle, shift x, y, shear x, y, zoom, contrast, flip


def augmenter(cfg: AugmentSettings, seed: int, on_device: bool = False) -> Augment | None:
    """The augmentation ``cfg`` asks for, seeded by ``seed``, or None when all of it is off.
    ``on_device``: the model applies it (see ``Augment``), so ``make_dataset`` leaves batches uint8."""
    if not (cfg.rotation or cfg.shift or cfg.shear or cfg.zoom or cfg.contrast or cfg.flip):
        return None
    return Augment(cfg, seed, on_device=on_device)


@keras.saving.register_keras_serializable(package="chestxray")
class Augment(keras.layers.Layer):
    """Random rotation, shift, shear, zoom and horizontal flip as ONE projective transform per image
    (one bilinear resampling, constant fill 0), then random contrast, on batches (N, H, W, C) in
    [0, 255]; float32 out. The draws mean what the Keras preprocessing layers' factors mean:
    an angle within ±``rotation`` of a full turn, a shift within ±``shift`` of each side, shear
    factors (slopes) within ±``shear`` in x and y (about the centre, where Keras' RandomShear
    shears about the top-left corner and so also shifts), a zoom factor in 1 ± ``zoom`` (above 1
    shows more of the image, smaller), a contrast factor in 1 ± ``contrast`` about each image's
    mean, clipped to [0, 255], and a left-right flip with probability 1/2 when ``flip``.

    Two places to run it. ``make_dataset`` runs ``transform`` per batch in tf.data (the CPU) with a
    seed per batch drawn from ``seed``, so parallel map calls stay deterministic. With ``on_device``
    it is the model's first layer and the training step runs it on the accelerator: it draws each
    call's seed from its own seed generator, and outside training passes images through as float32.
    """

    def __init__(self, settings: AugmentSettings, seed: int, on_device: bool = False, **kwargs: Any) -> None:
        super().__init__(**{"dtype": "float32", **kwargs})
        self.settings, self.seed, self.on_device = settings, seed, on_device
        self.geometric = bool(settings.rotation or settings.shift or settings.shear or settings.zoom or settings.flip)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return tf.cast(images, tf.float32)
        seed = self.seed_generator.next()
        replicas = tf.distribute.get_replica_context()
        if replicas is not None and replicas.num_replicas_in_sync > 1:  # each replica its own draws
            seed = tf.random.experimental.stateless_fold_in(seed, replicas.replica_id_in_sync_group)
        return self.transform(images, seed)

    def transform(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augment a batch; the same ``seed`` (a stateless seed, shape (2,)) gives the same output."""
        return self.apply(images, self.sample(images, seed))

    def sample(self, images: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """Per image: ``angle`` (radians), ``shift`` (x, y in pixels), ``shear`` (x, y slopes),
        ``zoom``, ``contrast`` (factors), ``flip`` (bool). Off settings give the identity."""
        cfg, shape = self.settings, tf.shape(images)
        u = tf.random.stateless_uniform((shape[0], DRAWS), seed, minval=-1.0, maxval=1.0)
        sides = tf.cast(tf.stack([shape[2], shape[1]]), tf.float32)
        return {
            "angle": u[:, 0] * (2 * math.pi * cfg.rotation),
            "shift": u[:, 1:3] * cfg.shift * sides,
            "shear": u[:, 3:5] * cfg.shear,
            "zoom": 1.0 + u[:, 5] * cfg.zoom,
            "contrast": 1.0 + u[:, 6] * cfg.contrast,
            "flip": tf.logical_and(u[:, 7] < 0.0, cfg.flip),
        }

    def apply(self, images: tf.Tensor, draws: dict[str, tf.Tensor]) -> tf.Tensor:
        """The one resampling (none when only contrast is on), then the contrast."""
        shape = tf.shape(images)
        transforms = projective_transforms(draws, shape[1], shape[2]) if self.geometric else None
        return _resample_and_contrast(images, transforms, draws["contrast"] if self.settings.contrast else None)

    def get_config(self) -> dict[str, Any]:
        settings = self.settings.model_dump()
        return {**super().get_config(), "settings": settings, "seed": self.seed, "on_device": self.on_device}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Augment:
        return cls(**{**config, "settings": AugmentSettings(**config["settings"])})


def projective_transforms(draws: dict[str, tf.Tensor], height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Rows [a0, a1, a2, b0, b1, b2, 0, 0] that map each output pixel (x, y) to the input point it
    samples, (a0 x + a1 y + a2, b0 x + b1 y + b2): what Keras' layers applied one after the other
    (rotation, shift, shear but about the centre, zoom, flip) would sample, in one step. About the centre c, with
    rotation R, shift t, shear S and zoom z (negated in x by a flip): input = R (S z (p - c) - t) + c.
    """
    cos, sin = tf.cos(draws["angle"]), tf.sin(draws["angle"])
    shear_x, shear_y = draws["shear"][:, 0], draws["shear"][:, 1]
    zoom_x = draws["zoom"] * tf.where(draws["flip"], -1.0, 1.0)
    zoom_y = draws["zoom"]
    a0, a1 = (cos - sin * shear_y) * zoom_x, (cos * shear_x - sin) * zoom_y  # R S diag(zoom_x, zoom_y)
    b0, b1 = (sin + cos * shear_y) * zoom_x, (sin * shear_x + cos) * zoom_y
    shift_x, shift_y = draws["shift"][:, 0], draws["shift"][:, 1]
    cx, cy = (tf.cast(width, tf.float32) - 1) / 2, (tf.cast(height, tf.float32) - 1) / 2
    a2 = cx - a0 * cx - a1 * cy - (cos * shift_x - sin * shift_y)
    b2 = cy - b0 * cx - b1 * cy - (sin * shift_x + cos * shift_y)
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


@tf.function(jit_compile=True)  # XLA fuses both into one pass over the batch: see ``resample``
def _resample_and_contrast(images: tf.Tensor, transforms: tf.Tensor | None, contrast: tf.Tensor | None) -> tf.Tensor:
    if transforms is not None:
        images = resample(images, transforms)
    images = tf.cast(images, tf.float32)
    if contrast is not None:  # about each image's mean, as Keras' RandomContrast
        mean = tf.reduce_mean(images, axis=(1, 2), keepdims=True)
        images = tf.clip_by_value((images - mean) * contrast[:, None, None, None] + mean, 0.0, 255.0)
    return images


def resample(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """Each image of (N, H, W, C) sampled at its transform's input points, bilinear, 0 outside the
    image; float32. What ``ImageProjectiveTransformV3`` (bilinear, constant fill 0) gives for
    affine rows, as four gathers from the zero-padded batch, which XLA compiles into one pass (the
    op has no XLA kernel): in the input pipeline on 2 cores, 1.8x the op's images per CPU-second."""
    shape = tf.shape(images)
    n, height, width = shape[0], shape[1], shape[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    a0, a1, a2, b0, b1, b2 = (transforms[:, i, None, None] for i in range(6))
    cols, rows = tf.range(w)[None, None, :], tf.range(h)[None, :, None]
    # clipped to one pixel outside, every neighbour read lies in the image or its zero border
    # (1 pixel before, 2 after: the right neighbour of x = w)
    x = tf.clip_by_value(a0 * cols + (a1 * rows + a2), -1.0, w)
    y = tf.clip_by_value(b0 * cols + (b1 * rows + b2), -1.0, h)
    x0, y0 = tf.floor(x), tf.floor(y)
    row = width + 3
    first = (tf.range(n) * (height + 3) + 1) * row + 1  # each padded image's pixel (0, 0)
    at = tf.cast(y0, tf.int32) * row + tf.cast(x0, tf.int32) + first[:, None, None]
    flat = tf.reshape(tf.pad(images, [[0, 0], [1, 2], [1, 2], [0, 0]]), [-1, images.shape[-1]])
    top_left, top_right, bottom_left, bottom_right = (
        tf.cast(tf.gather(flat, at + offset), tf.float32) for offset in (0, 1, row, row + 1)
    )
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = top_left + fx * (top_right - top_left)
    bottom = bottom_left + fx * (bottom_right - bottom_left)
    return top + fy * (bottom - top)


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: Augment | None = None,
    balanced: bool = False,
) -> tf.data.Dataset:
    """A tf.data pipeline over (images, labels): batches are gathered from the memory map, so
    memory holds a few batches, never the dataset. Images come out float32, augmented by
    ``augment`` with a seed per batch drawn from ``seed`` (another each epoch, the same on a
    rerun); with an ``on_device`` augmentation they stay uint8 for the model to augment.

    ``balanced`` oversamples: the classes take turns, each cycling through its own images in a
    fresh shuffled order, so every batch holds the classes in equal numbers (±1); an epoch is
    still ``len(x)`` images.
    """

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)
        return np.asarray(x[idx]), y[idx]

    def load(idx):
        images, labels = tf.numpy_function(gather, [idx], (tf.uint8, tf.int64), stateful=False)
        return tf.ensure_shape(images, (None, *x.shape[1:])), tf.ensure_shape(labels, (None,))

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
    ds = ds.batch(batch_size)
    if augment is None:
        ds = ds.map(lambda idx: _as_float(*load(idx)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif augment.on_device:
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def augmented(idx, draw):
            images, labels = load(idx)
            return augment.transform(images, tf.stack([draw, tf.constant(0, tf.int64)])), labels

        ds = tf.data.Dataset.zip(ds, seeds).map(augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _as_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32), labels
