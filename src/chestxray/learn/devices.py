"""Precision and placement from params: mixed precision on GPUs, MirroredStrategy over several,
MultiWorkerMirroredStrategy over several processes (``TF_CONFIG``, see ``learn.cluster``), and
augmentation on the GPU when there is one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf


def dtype_policy(setting: str) -> str:
    """The Keras dtype policy: 'auto' is mixed_float16 when a GPU is visible, else float32."""
    if setting != "auto":
        return setting
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def augment_on_device() -> bool:
    """Whether training augments on the accelerator (a GPU is visible): the model's first layer
    augments, and the input pipeline only gathers uint8 batches for it."""
    return bool(tf.config.list_physical_devices("GPU"))


def strategy(setting: str) -> tf.distribute.Strategy:
    """'auto': MirroredStrategy over all GPUs when there are 2+, else the default (one device);
    'mirrored': MirroredStrategy over all GPUs, else over all CPU devices; 'none': the default;
    'multiworker': MultiWorkerMirroredStrategy over the processes ``TF_CONFIG`` lists (check it first
    with ``cluster.read``), each over its GPUs, else its CPU. TensorFlow requires this to be called
    before any other TensorFlow op of the process: call it first."""
    if setting == "multiworker":
        return MultiWorkerMirroredStrategy()  # reads TF_CONFIG; collectives: NCCL on GPUs, else ring
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if setting == "mirrored" or (setting == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """TensorFlow's, with the ``reduce`` that Keras 3.15's ``fit`` needs of it (without it ``fit``
    fails: keras-team/keras#20585, open). Keras reduces a whole ``(images, labels)`` batch to build
    the training state, and TensorFlow's multi-worker reduce takes one value, not a structure: this
    one reduces each value of the structure. Keras reduces each step's logs, scalars, along axis 0,
    which a scalar does not have: this one reduces a scalar across replicas (axis None), as the mean
    over its one element would."""

    def reduce(self, reduce_op: Any, value: Any, axis: int | None) -> Any:
        reduce_one = super().reduce

        def one(v: Any) -> tf.Tensor:
            scalar = self.experimental_local_results(v)[0].shape.rank == 0
            return reduce_one(reduce_op, v, None if scalar else axis)

        return tf.nest.map_structure(one, value)


@contextlib.contextmanager
def dtype_policy_scope(policy: str) -> Iterator[None]:
    """Build models under ``policy``; the global policy is restored on exit."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
