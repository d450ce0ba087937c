"""The evaluation's plots: confusion matrix, one-vs-rest ROC and precision-recall curves, reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

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
    fig, ((ax,),) = figure((6.5, 6))
    for name, curve in curves.items():
        auc = aucs.get(name)
        label = f"{name} (AUC = {auc:.3f})" if auc is not None else f"{name} (AUC n/a)"
        ax.plot(curve["fpr"], curve["tpr"], lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="Chance")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="False positive rate (1 − specificity)",
        ylabel="True positive rate (sensitivity)",
        title="ROC curves (one-vs-rest)",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path)


def precision_recall(curves: dict[str, pd.DataFrame], aps: dict[str, float | None], path: Path) -> None:
    """One-vs-rest precision-recall curves, one line per class with its PR-AUC (average precision)."""
    fig, ((ax,),) = figure((6.5, 6))
    for name, curve in curves.items():
        ap = aps.get(name)
        label = f"{name} (PR-AUC = {ap:.3f})" if ap is not None else f"{name} (PR-AUC n/a)"
        ax.step(curve["recall"], curve["precision"], where="post", lw=2, label=label)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="Recall (sensitivity)",
        ylabel="Precision",
        title="Precision-recall curves (one-vs-rest)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    save_figure(fig, path)


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
