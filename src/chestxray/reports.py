"""Evaluation plots (PNG, written atomically) and the Markdown leaderboard."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from chestxray.io import atomic_path

DPI = 110
MISSING = "–"
LEADERBOARD_COLUMNS = (  # (row key, title); a metric with <key>_low and <key>_high shows its 95 % CI
    ("run_name", "Run"),
    ("model", "Model"),
    ("weights", "Weights"),
    ("image_size", "Image size"),
    ("imbalance", "Imbalance"),
    ("epochs", "Epochs"),
    ("macro_f1", "Macro F1 [95 % CI]"),
    ("accuracy", "Accuracy [95 % CI]"),
    ("balanced_accuracy", "Balanced acc."),
    ("weighted_f1", "Weighted F1"),
    ("roc_auc_macro", "ROC-AUC"),
    ("covid_sensitivity", "COVID sens."),
    ("covid_specificity", "COVID spec."),
    ("ece", "ECE"),
    ("train_seconds", "Train s"),
    ("params", "Params"),
    ("model_mb", "Model MB"),
    ("start_time", "Started"),
    ("run_id", "Run ID"),
)


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG via a temp file, then close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


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


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Confusion matrix as two panels: raw counts and row-normalised (recall per true class)."""
    cm = np.asarray(cm, dtype=int)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 2.2 + 0.9 * len(classes)
    fig, (left, right) = plt.subplots(1, 2, figsize=(2 * size + 1.5, size), layout="constrained")
    _matrix_panel(left, cm, classes, "Counts", "d", max(int(cm.max()), 1))
    _matrix_panel(right, rates, classes, "Row-normalised (recall per true class)", ".2f", 1.0)
    save_figure(fig, path)


def plot_roc(curves: dict[str, pd.DataFrame], aucs: dict[str, float | None], path: Path) -> None:
    """One-vs-rest ROC curves, one line per class with its AUC in the legend, plus chance."""
    fig, ax = plt.subplots(figsize=(6.5, 6), layout="constrained")
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


def plot_pr(curves: dict[str, pd.DataFrame], aps: dict[str, float | None], path: Path) -> None:
    """One-vs-rest precision-recall curves, one line per class with its PR-AUC (average precision)."""
    fig, ax = plt.subplots(figsize=(6.5, 6), layout="constrained")
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


def plot_reliability(table: pd.DataFrame, ece: float | None, path: Path) -> None:
    """Reliability diagram: accuracy against mean confidence per bin (a calibrated model lies on
    the diagonal), with the share of images per bin below."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=(3, 1), sharex=True, layout="constrained")
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


def plot_history(history: pd.DataFrame, path: Path, fine_tune_start: int | None) -> None:
    """Training curves: loss and accuracy panels with train/val lines.

    ``fine_tune_start`` is the value on the ``epoch`` axis where fine-tuning begins; a dashed
    vertical line marks it when given.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, metric, title in zip(axes, ("loss", "accuracy"), ("Loss", "Accuracy")):
        for column, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if column in history:
                ax.plot(history["epoch"], history[column], marker="o", ms=3, label=label)
        if fine_tune_start is not None:
            ax.axvline(fine_tune_start, ls="--", color="grey", label="fine-tuning starts")
        ax.set(title=title, xlabel="Epoch", ylabel=title)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def _missing(value: Any) -> bool:
    """None or NaN."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _cell(value: Any) -> str:
    """Format one table cell: floats to 3 decimals, ints with separators, missing as a dash."""
    if _missing(value):
        return MISSING
    if isinstance(value, (float, np.floating)):
        return f"{value:.3f}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value)
    return str(value).replace("|", "\\|") or MISSING


def _row_cell(row: Mapping[str, Any], key: str) -> str:
    """The cell for ``row[key]``, with its 95 % CI (``0.884 [0.829, 0.931]``) when the row has
    ``<key>_low`` and ``<key>_high``."""
    value, low, high = row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high")
    if _missing(value) or _missing(low) or _missing(high):
        return _cell(value)
    return f"{_cell(value)} [{_cell(low)}, {_cell(high)}]"


def leaderboard_markdown(
    rows: Sequence[Mapping[str, Any]], champion_run_id: str | None, intro: str = "", notes: Sequence[str] = ()
) -> str:
    """Markdown leaderboard with rows in the given order, the champion's run marked with ★,
    ``intro`` above the table and ``notes`` (one paragraph each) below it."""
    lines = ["# Leaderboard", "", *([intro, ""] if intro else [])]
    if rows:
        header = ["Champion", "#", *(title for _, title in LEADERBOARD_COLUMNS)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rank, row in enumerate(rows, start=1):
            mark = "★" if champion_run_id is not None and row.get("run_id") == champion_run_id else ""
            lines.append(
                "| " + " | ".join([mark, str(rank), *(_row_cell(row, key) for key, _ in LEADERBOARD_COLUMNS)]) + " |"
            )
    else:
        lines.append("_No runs yet._")
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot_leaderboard(rows: Sequence[Mapping[str, Any]], metric: str, champion_run_id: str | None, path: Path) -> None:
    """Horizontal bars of ``metric`` per run, best at the top (label: run name and model), with
    95 % CI error bars where rows carry ``<metric>_low`` / ``<metric>_high``; the champion's bar
    is highlighted."""
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.38 * max(n, 1)), layout="constrained")
    values = np.array([row[metric] for row in rows], dtype=float)
    lows, highs = (
        np.array([row.get(f"{metric}_{end}") for row in rows], dtype=float) for end in ("low", "high")
    )  # None → NaN
    champion = [champion_run_id is not None and row.get("run_id") == champion_run_id for row in rows]
    y = np.arange(n)
    ax.barh(y, values, height=0.7, color=["tab:orange" if c else "tab:blue" for c in champion])
    ci = np.isfinite(lows) & np.isfinite(highs)
    if ci.any():
        spread = np.vstack([values[ci] - lows[ci], highs[ci] - values[ci]]).clip(min=0)
        ax.errorbar(values[ci], y[ci], xerr=spread, fmt="none", ecolor="black", elinewidth=1, capsize=3)
    ax.set_yticks(y, [f"{row.get('run_name') or row.get('run_id')} ({row.get('model')})" for row in rows])
    for i, value in enumerate(values):
        ax.text(0.01, i, f"{value:.3f}", va="center", ha="left", color="white", fontsize=9, fontweight="bold")
    ax.invert_yaxis()
    ax.set(
        xlim=(0, 1),
        xlabel=f"Test {metric}" + (" (error bars: 95 % CI)" if ci.any() else ""),
        title=f"Leaderboard by test {metric}" + ("" if n else ": no evaluated runs yet"),
    )
    ax.grid(axis="x", alpha=0.3)
    if any(champion):
        ax.legend(
            handles=[plt.Rectangle((0, 0), 1, 1, color="tab:orange")],
            labels=["champion"],
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
        )
    save_figure(fig, path)
