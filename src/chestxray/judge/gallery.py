"""The Grad-CAM gallery of the test split: per true class, the most confident correct and wrong
images, each overlaid with the Grad-CAM of the predicted class (what drove the decision)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from chestxray.figures import figure, save_figure
from chestxray.io import atomic_path
from chestxray.learn.explain import gradcam, overlay, target_layer
from chestxray.progress import progress

log = logging.getLogger(__name__)


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
    with progress(len(order), "Grad-CAM gallery") as bar:
        heat = dict(zip(order, gradcam(model, x[order], pred[order], bar=bar), strict=True))
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


def _plot_class(
    name: str,
    layer: str,
    tiles: dict[str, list[tuple[np.ndarray, str]]],
    totals: dict[str, int],
    columns: int,
    path: Path,
) -> None:
    """One class's figure: a row of captioned overlays per outcome; an empty row says "none"."""
    fig, axes = figure((2.3 * columns + 0.8, 5.6), 2, columns)
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
    save_figure(fig, path)


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
