"""Where a trained model finds its signal: the test images scored without the central box (most of
the lungs) and with only that box, and the share of its Grad-CAM mass that falls inside the lung
masks. A model that reads the disease from the lungs loses much of its score without them and puts
most of its Grad-CAM mass on them; one that learned a shortcut (a hospital's marker, a child's
smaller chest) does neither."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np

from chestxray.data.occlusion import keep_centre, occlude
from chestxray.judge.metrics import classification_metrics, number
from chestxray.learn.explain import gradcam
from chestxray.learn.models import predict_proba
from chestxray.progress import progress

log = logging.getLogger(__name__)

CHUNK = 256  # images occluded, scored or explained at once: 256 float maps of 224² take 51 MB
VIEWS = {"occluded": occlude, "lungs_only": keep_centre}  # the central box removed; only the box kept
FILL = "mean"  # what replaces the removed part: the image's mean grey (a black box throws a whole-image model off)


def occlusion_scores(
    model: keras.Model, x: np.ndarray, y: np.ndarray, classes: Sequence[str], fraction: float
) -> dict[str, dict[str, float | None]]:
    """Macro-F1 and accuracy (argmax rule, as ``classification_metrics``) of ``model`` on grey 0–255
    images ``x`` (N, S, S, 1) with true class indices ``y``, in each view of ``VIEWS`` with a central
    box of side ``fraction``, the removed part filled with each image's mean grey over the part kept:
    ``{"occluded": {"macro_f1", "accuracy"}, "lungs_only": {...}}``."""
    out = {}
    for name, view in VIEWS.items():
        with progress(len(x), name) as bar:
            prob = np.concatenate(
                [predict_proba(model, view(np.asarray(x[part]), fraction, FILL), bar) for part in _chunks(len(x))]
            )
        scores = classification_metrics(y, prob, classes)
        out[name] = {"macro_f1": scores["macro_f1"], "accuracy": scores["accuracy"]}
        log.info("%s (central box %.0f %%): macro-F1 %s, accuracy %s", name, 100 * fraction, *out[name].values())
    return out


def gradcam_in_lungs(
    model: keras.Model, x: np.ndarray, y: np.ndarray, masks: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """The share of each image's Grad-CAM mass (explaining the predicted class) inside its lung mask,
    averaged per true class and over all images, beside ``lung_area``, the mean share of the image
    the masks cover: what a model spreading its attention evenly would get.

    ``x`` (N, S, S, 1) grey 0–255, ``y`` (N,) true class indices, ``masks`` (N, S, S) bool.
    Returns ``{"<Class>": float | None, ..., "overall": float | None, "lung_area": float, "n": int,
    "empty": int}``. An all-zero map (nothing in the explained feature map speaks for the predicted
    class) has no mass to share out: it is left out of the means and counted in ``empty``; ``n``
    counts the images averaged. A class without such an image gets None.
    """
    y = np.asarray(y)
    if masks.shape != x.shape[:3] or y.shape != (len(x),):
        raise ValueError(f"masks {masks.shape} and labels {y.shape} must match images {x.shape} (N, S, S, 1)")
    share, area = np.empty(len(x)), np.empty(len(x))
    with progress(len(x), "Grad-CAM in lungs") as bar:
        for part in _chunks(len(x)):
            cam = gradcam(model, np.asarray(x[part]), bar=bar).astype(np.float64)
            lungs = np.asarray(masks[part], dtype=bool)
            mass, inside = cam.sum(axis=(1, 2)), (cam * lungs).sum(axis=(1, 2))
            share[part] = np.divide(inside, mass, out=np.full_like(mass, np.nan), where=mass > 0)
            area[part] = lungs.mean(axis=(1, 2))
    kept = ~np.isnan(share)
    out: dict[str, Any] = {c: _mean(share[kept & (y == i)]) for i, c in enumerate(classes)}
    out |= {"overall": _mean(share[kept]), "lung_area": _mean(area), "n": int(kept.sum()), "empty": int((~kept).sum())}
    log.info(
        "Grad-CAM mass inside the lungs: %s over %d images (%d all-zero maps left out); the lungs cover %s",
        out["overall"],
        out["n"],
        out["empty"],
        out["lung_area"],
    )
    return out


def _chunks(n: int) -> Iterator[slice]:
    """Slices of ``CHUNK`` images covering 0..n."""
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def _mean(values: np.ndarray) -> float | None:
    """The mean, rounded as the metrics are; None for no values."""
    return number(values.mean()) if len(values) else None
