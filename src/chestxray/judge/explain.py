"""Grad-CAM (Selvaraju et al., 2017) for any backbone, blended overlays, and a per-class gallery.

The model is the one ``build_model`` makes (also after ``keras.models.load_model``): layers
before the base (preprocessing), the base (the one nested ``keras.Model``), then a chain of head
layers ending in a Dense softmax. Grad-CAM takes the gradient of the class score (the logit,
before the softmax, so confident predictions don't saturate it) with respect to a feature map
inside the base; see ``target_layer`` for which one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from chestxray import reports  # selects matplotlib's Agg backend (no display needed)
from chestxray.io import atomic_path

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


def gradcam(model: keras.Model, images: np.ndarray, class_index: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM heatmaps (N, S, S) float32 in [0, 1] of grey 0–255 ``images`` (N, S, S, 1).

    ``class_index`` (N,) is the class to explain per image; None explains the predicted one.
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


def gallery(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    prob: np.ndarray,
    classes: Sequence[str],
    paths: Sequence[str | Path],
    out_dir: Path,
    per_outcome: int,
) -> dict[str, Any]:
    """Write ``out_dir`` (atomically): one PNG per true class with up to ``per_outcome``
    correctly and wrongly classified images each, most confident first, overlaid with the
    Grad-CAM of the predicted class, and an ``index.md``. Returns a JSON-ready summary; its
    ``shown`` lists the indices into ``x`` in display order."""
    y, prob = np.asarray(y), np.asarray(prob)
    n = len(x)
    if prob.shape != (n, len(classes)) or y.shape != (n,) or len(paths) != n:
        raise ValueError(
            f"expected y ({n},), prob ({n}, {len(classes)}) and {n} paths for {n} images; "
            f"got y {y.shape}, prob {prob.shape}, {len(paths)} paths"
        )
    if per_outcome < 0:
        raise ValueError(f"per_outcome must be at least 0, got {per_outcome}")
    files = [re.sub(r"[^A-Za-z0-9_-]", "_", name) + ".png" for name in classes]
    if len(set(files)) != len(files):
        raise ValueError(f"class names collide as file names: {files}")
    pred = prob.argmax(axis=1)
    confidence = prob[np.arange(n), pred]
    shown: dict[str, dict[str, list[int]]] = {}
    totals: dict[str, dict[str, int]] = {}
    for c, name in enumerate(classes):
        sets = {"correct": np.flatnonzero((y == c) & (pred == c)), "wrong": np.flatnonzero((y == c) & (pred != c))}
        totals[name] = {outcome: len(idx) for outcome, idx in sets.items()}
        shown[name] = {
            outcome: idx[np.argsort(-confidence[idx], kind="stable")][:per_outcome].tolist()
            for outcome, idx in sets.items()
        }
    order = [i for name in classes for idx in shown[name].values() for i in idx]
    heat = dict(zip(order, gradcam(model, x[order], pred[order]), strict=True))
    layer = target_layer(model).name
    summary: dict[str, Any] = {"layer": layer, "per_outcome": per_outcome, "classes": {}}

    def caption(i: int) -> str:
        return f"{Path(paths[i]).name}\n{classes[y[i]]} → {classes[pred[i]]}, p={confidence[i]:.2f}"

    with atomic_path(out_dir, is_dir=True) as tmp:
        for name, file in zip(classes, files, strict=True):
            tiles = {
                outcome: [(overlay(x[i], heat[i]), caption(i)) for i in idx] for outcome, idx in shown[name].items()
            }
            _plot_class(name, layer, tiles, totals[name], max(per_outcome, 1), tmp / file)
            summary["classes"][name] = {
                "file": file,
                **{outcome: len(idx) for outcome, idx in shown[name].items()},
                **{f"total_{outcome}": count for outcome, count in totals[name].items()},
                "shown": shown[name],
            }
        (tmp / "index.md").write_text(_index(summary), encoding="utf-8")
    log.info("Grad-CAM gallery of %d images (layer %s) in %s", len(order), layer, out_dir)
    return summary


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


def _plot_class(
    name: str,
    layer: str,
    tiles: dict[str, list[tuple[np.ndarray, str]]],
    totals: dict[str, int],
    columns: int,
    path: Path,
) -> None:
    """One class's figure: a row of captioned overlays per outcome; an empty row says "none"."""
    fig, axes = plt.subplots(2, columns, figsize=(2.3 * columns + 0.8, 5.6), squeeze=False, layout="constrained")
    for row, (outcome, items) in zip(axes, tiles.items(), strict=True):
        for col, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if col < len(items):
                ax.imshow(items[col][0])
                ax.set_title(items[col][1], fontsize=7)
            elif col == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="grey")
        row[0].set_ylabel(f"{outcome} ({len(items)} of {totals[outcome]})")
    fig.suptitle(f"True class {name}: Grad-CAM of the predicted class (what drove the decision), layer {layer}")
    reports.save_figure(fig, path)


def _index(summary: dict[str, Any]) -> str:
    """The gallery's index.md: counts per class and links to the figures."""
    lines = [
        "# Grad-CAM gallery",
        "",
        (
            f"Per true class, up to {summary['per_outcome']} correctly and wrongly classified test images, "
            "most confident first. The heatmap explains the **predicted** class (what drove the decision), "
            f"at layer `{summary['layer']}`."
        ),
        "",
        "| Class | Correct (shown) | Wrong (shown) | Figure |",
        "|---|---|---|---|",
    ]
    for name, c in summary["classes"].items():
        cell = name.replace("|", "\\|")
        lines.append(
            f"| {cell} | {c['total_correct']} ({c['correct']}) | {c['total_wrong']} ({c['wrong']}) "
            f"| [{c['file']}]({c['file']}) |"
        )
    return "\n".join(lines) + "\n"
