"""Grad-CAM (Selvaraju et al., 2017) for any backbone, and blended overlays.

The model is the one ``build_model`` makes (also after ``keras.models.load_model``): layers
before the base (preprocessing), the base (the one nested ``keras.Model``), then a chain of head
layers ending in a Dense softmax. Grad-CAM takes the gradient of the class score (the logit,
before the softmax, so confident predictions don't saturate it) with respect to a feature map
inside the base; see ``target_layer`` for which one.
"""

from __future__ import annotations

import logging

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from chestxray.progress import Progress

log = logging.getLogger(__name__)

# Smallest side of the explained feature map: a 1×1 map makes a constant heatmap and a 2×2 one
# little more. At 224 px every backbone's output (7×7) qualifies; at 64 px (2×2 output) the
# last 4×4 stage is explained instead.
MIN_SIDE = 4
BATCH = 32  # images per gradient computation: bounded memory, few graph calls


def target_layer(model: keras.Model) -> keras.Operation:
    """The operation inside the base whose output Grad-CAM explains.

    The last one (in graph order) whose output is a 4-D feature map with both sides at least
    ``MIN_SIDE`` (or the largest side any map has, for tiny inputs) and that every path from
    the base's input to its output goes through. The last condition picks a residual block's
    sum, not a layer inside one branch of it (ResNet50V2, ConvNeXt at small sizes); zero-padding
    layers are skipped, their borders are not image content. The base's output itself is
    chosen whenever it is large enough.
    """
    base = _parts(model)[1]
    maps = [
        op
        for op in base.operations
        if not isinstance(op, (keras.layers.InputLayer, keras.layers.ZeroPadding2D))
        and isinstance(op.output, keras.KerasTensor)
        and len(op.output.shape) == 4
    ]
    threshold = min(MIN_SIDE, max(_side(op) for op in maps))
    return next(op for op in reversed(maps) if _side(op) >= threshold and _dominates(op.output, base))


def gradcam(
    model: keras.Model, images: np.ndarray, class_index: np.ndarray | None = None, bar: Progress | None = None
) -> np.ndarray:
    """Grad-CAM heatmaps (N, S, S) float32 in [0, 1] of grey 0–255 ``images`` (N, S, S, 1).

    ``class_index`` (N,) is the class to explain per image; None explains the predicted one.
    Each batch's images are counted into ``bar``.
    Each map is divided by its own maximum (an all-zero map stays zero) after a bilinear resize
    to the image size.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, S, S, 1), got shape {images.shape}")
    n, size = len(images), images.shape[1:3]
    front, base, head = _parts(model)
    if class_index is not None:
        class_index = np.asarray(class_index)
        k = head[-1].units
        if class_index.shape != (n,) or np.any((class_index < 0) | (class_index >= k)):
            raise ValueError(f"class_index must be ({n},) class numbers in [0, {k}), got {class_index!r}")
    target = target_layer(model)
    features = keras.Model(base.input, [target.output, base.output])
    log.debug("Grad-CAM of %d images at %s", n, target.name)
    out = np.empty((n, *size), np.float32)
    for start in range(0, n, BATCH):
        x = tf.convert_to_tensor(images[start : start + BATCH], tf.float32)
        for layer in front:
            x = layer(x)
        with tf.GradientTape() as tape:
            tape.watch(x)  # not the weights: a frozen base has no trainable variables to track
            fmap, h = features(x, training=False)
            for layer in head[:-1]:
                h = layer(h, training=False)
            logits = _logits(head[-1], h)
            chosen = (
                tf.argmax(logits, axis=1)
                if class_index is None
                else tf.convert_to_tensor(class_index[start : start + BATCH], tf.int64)
            )
            score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
        grads = tf.cast(tape.gradient(score, fmap), tf.float32)  # float16 under mixed precision
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(tf.cast(fmap, tf.float32) * weights, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, size, method="bilinear")[..., 0].numpy()
        peak = cam.max(axis=(1, 2), keepdims=True)
        out[start : start + BATCH] = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        if bar is not None:
            bar.update(len(cam))
    return out


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Grey ``image`` (S, S) or (S, S, 1) uint8 with ``heatmap`` (S, S) in [0, 1] drawn over it
    in the "jet" colormap: (1 − alpha) · grey + alpha · colour, as (S, S, 3) uint8 RGB."""
    grey = np.asarray(image, np.float32).reshape(np.shape(image)[:2])
    if np.shape(heatmap) != grey.shape:
        raise ValueError(f"heatmap shape {np.shape(heatmap)} does not match the image's {grey.shape}")
    colour = matplotlib.colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    blend = (1 - alpha) * grey[..., None] + alpha * colour
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def _parts(model: keras.Model) -> tuple[list[keras.Layer], keras.Model, list[keras.Layer]]:
    """(layers before the base, the base, layers after it) of a ``build_model`` model."""
    bases = [i for i, layer in enumerate(model.layers) if isinstance(layer, keras.Model)]
    if len(bases) != 1:
        raise ValueError(f"expected one nested base model in {model.name}, found {len(bases)}")
    (i,) = bases
    front = [layer for layer in model.layers[:i] if not isinstance(layer, keras.layers.InputLayer)]
    return front, model.layers[i], model.layers[i + 1 :]


def _side(op: keras.Operation) -> int:
    return min(op.output.shape[1:3])


def _dominates(tensor: keras.KerasTensor, base: keras.Model) -> bool:
    """Whether every path from the base's input to its output passes through ``tensor``
    (walking the graph back from the output; Keras has no public API for a tensor's parents)."""
    stack, seen = [base.output], set()
    while stack:
        t = stack.pop()
        if t is tensor or id(t) in seen:
            continue
        seen.add(id(t))
        op, node_index, _ = t._keras_history
        if isinstance(op, keras.layers.InputLayer):
            return False
        stack.extend(op._inbound_nodes[node_index].input_tensors)
    return True


def _logits(layer: keras.Layer, h: tf.Tensor) -> tf.Tensor:
    """The class scores of the output Dense layer before its softmax."""
    if not isinstance(layer, keras.layers.Dense):
        raise TypeError(f"expected a Dense output layer, got {type(layer).__name__} '{layer.name}'")
    scores = tf.matmul(tf.cast(h, layer.kernel.dtype), layer.kernel)
    return scores + layer.bias if layer.use_bias else scores
