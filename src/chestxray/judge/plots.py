"""The evaluation's plots: confusion matrix, one-vs-rest ROC and precision-recall curves, reliability diagram."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from chestxray.figures import figure, save_figure


def _matrix_panel(ax: Axes, values: np.ndarray, classes: Sequence[str], title: str, fmt: str, vmax: float) -> None:
    """Draw one annotated heatmap of ``values`` with class-labelled axes."""
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=30, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    for (row, col), value in np.ndenumerate(values):
        colour = "white" if value > vmax / 2 else "black"
        ax.text(col, row, format(value, fmt), ha="center", va="center", color=colour, fontsize=11)


def confusion(cm: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Confusion matrix as two panels: raw counts and row-normalised (recall per true class)."""
    cm = np.asarray(cm, dtype=int)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 2.2 + 0.9 * len(classes)
    fig, ((left, right),) = figure((2 * size + 1.5, size), ncols=2)
    _matrix_panel(left, cm, classes, "Counts", "d", max(int(cm.max()), 1))
    _matrix_panel(right, rates, classes, "Row-normalised (recall per true class)", ".2f", 1.0)
    save_figure(fig, path)


def roc(curves: dict[str, pd.DataFrame], aucs: dict[str, float | None], path: Path) -> None:
    """One-vs-rest ROC curves, one line per class with its AUC in the legend, plus chance."""
    fig, ax = _per_class(curves, aucs, "AUC", lambda ax, c, label: ax.plot(c["fpr"], c["tpr"], lw=2, label=label))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="Chance")
    ax.set(
        xlabel="False positive rate (1 − specificity)",
        ylabel="True positive rate (sensitivity)",
        title="ROC curves (one-vs-rest)",
    )
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def precision_recall(curves: dict[str, pd.DataFrame], aps: dict[str, float | None], path: Path) -> None:
    """One-vs-rest precision-recall curves, one line per class with its PR-AUC (average precision)."""

    def step(ax: Axes, curve: pd.DataFrame, label: str) -> None:
        ax.step(curve["recall"], curve["precision"], where="post", lw=2, label=label)

    fig, ax = _per_class(curves, aps, "PR-AUC", step)
    ax.set(xlabel="Recall (sensitivity)", ylabel="Precision", title="Precision-recall curves (one-vs-rest)")
    ax.legend(loc="lower left")
    save_figure(fig, path)


def _per_class(
    curves: dict[str, pd.DataFrame],
    areas: dict[str, float | None],
    area: str,
    draw: Callable[[Axes, pd.DataFrame, str], object],
) -> tuple[Figure, Axes]:
    """A unit-square panel with ``draw(ax, curve, label)`` for each class, labelled with its ``area``."""
    fig, ((ax,),) = figure((6.5, 6))
    for name, curve in curves.items():
        value = areas.get(name)
        draw(ax, curve, f"{name} ({area} = {value:.3f})" if value is not None else f"{name} ({area} n/a)")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return fig, ax


def reliability(table: pd.DataFrame, ece: float | None, path: Path) -> None:
    """Reliability diagram: accuracy against mean confidence per bin (a calibrated model lies on
    the diagonal), with the share of images per bin below."""
    fig, ((top,), (bottom,)) = figure((6, 7), nrows=2, height_ratios=(3, 1), sharex=True)
    width = table["high"] - table["low"]
    filled = table[table["count"] > 0]
    top.bar(
        filled["low"],
        filled["accuracy"],
        width=width[filled.index],
        align="edge",
        alpha=0.7,
        edgecolor="black",
        label="accuracy",
    )
    top.plot(filled["confidence"], filled["accuracy"], "o-", color="tab:red", label="mean confidence → accuracy")
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    title = "Reliability diagram (top label)" + (f", ECE = {ece:.3f}" if ece is not None else "")
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="Accuracy", title=title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    bottom.bar(
        table["low"], table["count"] / max(int(table["count"].sum()), 1), width=width, align="edge", edgecolor="black"
    )
    bottom.set(xlabel="Confidence (probability of the predicted class)", ylabel="Share of images")
    bottom.grid(alpha=0.3)
    save_figure(fig, path)
