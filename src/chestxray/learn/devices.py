"""Precision and placement from params: mixed precision on GPUs, MirroredStrategy over several."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf


def dtype_policy(setting: str) -> str:
    """The Keras dtype policy: 'auto' is mixed_float16 when a GPU is visible, else float32."""
    if setting != "auto":
        return setting
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def strategy(setting: str) -> tf.distribute.Strategy:
    """'auto': MirroredStrategy over all GPUs when there are 2+, else the default (one device);
    'mirrored': MirroredStrategy over all GPUs, else over all CPU devices; 'none': the default."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if setting == "mirrored" or (setting == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def dtype_policy_scope(policy: str) -> Iterator[None]:
    """Build models under ``policy``; the global policy is restored on exit."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
