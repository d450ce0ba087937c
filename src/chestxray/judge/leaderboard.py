"""The leaderboard: MLflow runs as rows (names, key settings, test metrics with their 95 % CIs,
training cost), ranked by one metric of the registry, as Markdown and as a bar chart. Its metric
columns are the registry's ``leaderboard`` metrics, in the registry's order."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Rectangle

from chestxray.figures import figure, save_figure
from chestxray.judge.metrics import METRICS, Metric

MISSING = "–"
BOARD = tuple(m for m in METRICS if m.leaderboard)
COLUMNS = (  # (row key, title); a metric with <key>_low and <key>_high in the row shows its 95 % CI
    ("run_name", "Run"),
    ("model", "Model"),
    ("weights", "Weights"),
    ("image_size", "Image size"),
    ("imbalance", "Imbalance"),
    ("epochs", "Epochs"),
    *((m.name, f"{m.title} [95 % CI]" if m.ci else m.title) for m in BOARD),
    ("train_seconds", "Train s"),
    ("params", "Params"),
    ("model_mb", "Model MB"),
    ("start_time", "Started"),
    ("run_id", "Run ID"),
)


def rows(runs: list[dict[str, Any]], metric: Metric) -> list[dict[str, Any]]:
    """The runs that have ``test.<metric>`` as leaderboard rows, best first (ties: the earlier run first)."""
    earliest_first = sorted((r for r in runs if f"test.{metric.name}" in r["metrics"]), key=lambda r: r["start_time"])
    sign = -1 if metric.higher_is_better else 1
    return sorted((_row(r) for r in earliest_first), key=lambda row: sign * row[metric.name])


def better(metric: Metric, value: float, than: float) -> bool:
    """Whether ``value`` is strictly better than ``than`` on ``metric``."""
    return value > than if metric.higher_is_better else value < than


def _row(run: dict[str, Any]) -> dict[str, Any]:
    """One leaderboard row: names, key settings, every test metric (with CIs) and training cost."""
    m, p, tags = run["metrics"], run["params"], run["tags"]
    row: dict[str, Any] = {
        "run_id": run["run_id"],
        "run_name": run["run_name"],
        "model": tags.get("model", p.get("model")),
        "weights": p.get("train.weights"),
        "image_size": tags.get("data.image_size"),
        "imbalance": p.get("train.imbalance"),
        "epochs": _int(m.get("train.epochs_run")),
        "train_seconds": m.get("train.train_seconds"),
        "params": _int(m.get("train.params")),
        "model_mb": m.get("train.model_mb"),
        "start_time": datetime.fromtimestamp(run["start_time"] / 1000, UTC).isoformat(timespec="seconds"),
    }
    for metric in METRICS:  # every metric, so that any of them can rank; the table shows BOARD
        row[metric.name] = m.get(f"test.{metric.name}")
        if metric.ci:
            row[f"{metric.name}_low"] = m.get(f"test.ci.{metric.name}.low")
            row[f"{metric.name}_high"] = m.get(f"test.ci.{metric.name}.high")
    return row


def markdown(
    rows: Sequence[Mapping[str, Any]], champion_run_id: str | None, intro: str = "", notes: Sequence[str] = ()
) -> str:
    """The leaderboard in Markdown with rows in the given order, the champion's run marked with ★,
    ``intro`` above the table and ``notes`` (one paragraph each) below it."""
    lines = ["# Leaderboard", "", *([intro, ""] if intro else [])]
    if rows:
        header = ["Champion", "#", *(title for _, title in COLUMNS)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rank, row in enumerate(rows, start=1):
            mark = "★" if champion_run_id is not None and row.get("run_id") == champion_run_id else ""
            cells = [mark, str(rank), *(_row_cell(row, key) for key, _ in COLUMNS)]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("_No runs yet._")
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], metric: Metric, champion_run_id: str | None, path: Path) -> None:
    """Horizontal bars of ``metric`` per run in the given order (label: run name and model), with 95 %
    CI error bars where rows carry ``<metric>_low`` / ``<metric>_high``; the champion's bar is highlighted."""
    n, name = len(rows), metric.name
    fig, ((ax,),) = figure((8, 1.6 + 0.38 * max(n, 1)))
    values = np.array([row[name] for row in rows], dtype=float)
    lows, highs = (np.array([row.get(f"{name}_{end}") for row in rows], dtype=float) for end in ("low", "high"))
    champion = [champion_run_id is not None and row.get("run_id") == champion_run_id for row in rows]
    y = np.arange(n)
    ax.barh(y, values, height=0.7, color=["tab:orange" if c else "tab:blue" for c in champion])
    ci = np.isfinite(lows) & np.isfinite(highs)  # a missing bound (None) is NaN
    if ci.any():
        spread = np.vstack([values[ci] - lows[ci], highs[ci] - values[ci]]).clip(min=0)
        ax.errorbar(values[ci], y[ci], xerr=spread, fmt="none", ecolor="black", elinewidth=1, capsize=3)
    ax.set_yticks(y, [f"{row.get('run_name') or row.get('run_id')} ({row.get('model')})" for row in rows])
    for i, value in enumerate(values):
        ax.text(0.01, i, f"{value:.3f}", va="center", ha="left", color="white", fontsize=9, fontweight="bold")
    ax.invert_yaxis()
    direction = "" if metric.higher_is_better else ", lower is better"
    ax.set(
        xlim=(0, max(1.0, float(np.nanmax(values, initial=0)) * 1.05)),
        xlabel=f"Test {name}" + (" (error bars: 95 % CI)" if ci.any() else ""),
        title=f"Leaderboard by test {name}{direction}" + ("" if n else ": no evaluated runs yet"),
    )
    ax.grid(axis="x", alpha=0.3)
    if any(champion):
        handle = Rectangle((0, 0), 1, 1, color="tab:orange")
        ax.legend(handles=[handle], labels=["champion"], loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(fig, path)


def _int(value: float | None) -> int | None:
    """MLflow stores every metric as a float; counts read back as ints."""
    return None if value is None else int(value)


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
