"""The leaderboard: MLflow runs as rows (names, key settings, validation and test metrics with their
95 % CIs, the served rule's COVID sensitivity and specificity, training cost), ranked by one metric of
the registry on validation, as Markdown and as a bar chart; and the groups of runs that differ only in
their seeds, with the mean and standard deviation of that metric.

A row's metric keys are MLflow's: ``val.<metric>`` and ``test.<metric>``, with ``<key>.low`` and
``<key>.high`` for a 95 % CI (logged as ``<split>.ci.<metric>.low|high``), and the operating point's
``test.operating_point.threshold|sensitivity|specificity``. Its test columns are the registry's
``leaderboard`` metrics, in the registry's order."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from chestxray.figures import figure, save_figure
from chestxray.judge import audit_runs
from chestxray.judge.metrics import METRICS, Metric, number
from chestxray.tasks import COVID

MISSING = "–"
SPLITS = ("val", "test")  # the MLflow prefixes of evaluate's validation and test scores
BOARD = tuple(m for m in METRICS if m.leaderboard)
ARGMAX = frozenset({"covid_sensitivity", "covid_specificity"})  # the argmax class's; the served rule's are below
OPERATING_POINT = "test.operating_point"  # the served rule at the chosen threshold, COVID vs rest, on test
SEEDS = ("train.seed", "seed")  # params a seed group's runs may differ in (besides resolved.*)
CI = " [95 % CI]"


def store(uri: str, root: Path) -> str:
    """How the leaderboard names the MLflow store ``uri``: a SQLite file under the repository ``root``
    by its path relative to the root (``sqlite:///mlflow.db``, a URI that works from the root), so the
    committed page is the same in every clone and copy; any other store as it is."""
    path = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and path.is_relative_to(root):
        return f"sqlite:///{path.relative_to(root).as_posix()}"
    return uri


def columns(metric: Metric) -> tuple[tuple[str, str], ...]:
    """(row key, title) of the table's columns after the rank: settings, validation ``metric`` (the
    ranking), the served rule's threshold and COVID sensitivity and specificity on test, then the
    argmax rule's test metrics, cost."""
    return (
        ("run_name", "Run"),
        ("model", "Model"),
        ("weights", "Weights"),
        ("image_size", "Image size"),
        ("input", "Input"),
        ("imbalance", "Imbalance"),
        ("epochs", "Epochs"),
        ("seed", "Train seed"),
        (f"val.{metric.name}", f"Validation {metric.title}" + (CI if metric.ci else "")),
        (f"{OPERATING_POINT}.threshold", f"{COVID} threshold"),
        (f"{OPERATING_POINT}.sensitivity", f"{COVID} sens. @ threshold (test){CI}"),
        (f"{OPERATING_POINT}.specificity", f"{COVID} spec. @ threshold (test){CI}"),
        *(
            (f"test.{m.name}", f"{m.title}{' argmax' if m.name in ARGMAX else ''} (test)" + (CI if m.ci else ""))
            for m in BOARD
        ),
        ("train_seconds", "Train s"),
        ("params", "Params"),
        ("model_mb", "Model MB"),
        ("start_time", "Started"),
        ("run_id", "Run ID"),
    )


def ranked(run: Mapping[str, Any], metric: Metric) -> bool:
    """Whether the run has a validation ``metric`` to be ranked by (runs evaluated before evaluate
    scored validation have test metrics only)."""
    return f"val.{metric.name}" in run["metrics"]


def rows(runs: list[dict[str, Any]], metric: Metric) -> list[dict[str, Any]]:
    """The runs that have ``val.<metric>`` as leaderboard rows, best on validation first (ties: the
    earlier run first). Test metrics never enter the order."""
    earliest_first = sorted((r for r in runs if ranked(r, metric)), key=lambda r: r["start_time"])
    sign = -1 if metric.higher_is_better else 1
    return sorted((_row(r) for r in earliest_first), key=lambda row: sign * row[f"val.{metric.name}"])


def improvement(metric: Metric, value: float, over: float) -> float:
    """How much better ``value`` is than ``over`` in ``metric``'s direction (negative: worse)."""
    return value - over if metric.higher_is_better else over - value


def _row(run: dict[str, Any]) -> dict[str, Any]:
    """One leaderboard row: names, key settings, every validation and test metric (with CIs), the
    operating point, training cost, and ``setting`` (which seed group it belongs to)."""
    m, p, tags = run["metrics"], run["params"], run["tags"]
    row: dict[str, Any] = {
        "run_id": run["run_id"],
        "run_name": run["run_name"],
        "model": tags.get("model", p.get("model")),
        "weights": p.get("train.weights"),
        "image_size": tags.get("data.image_size"),
        "input": _input(tags.get("data.occlude")),
        "audit": audit_runs.is_audit(run),
        "imbalance": p.get("train.imbalance"),
        "epochs": _int(m.get("train.epochs_run")),
        "seed": _int_param(p.get("train.seed")),
        "setting": setting(run),
        "train_seconds": m.get("train.train_seconds"),
        "params": _int(m.get("train.params")),
        "model_mb": m.get("train.model_mb"),
        "start_time": datetime.fromtimestamp(run["start_time"] / 1000, UTC).isoformat(timespec="seconds"),
    }
    for split in SPLITS:
        for metric in METRICS:  # every metric, so that any of them can rank; the table shows BOARD
            key = f"{split}.{metric.name}"
            row[key] = m.get(key)
            if metric.ci:
                row |= {f"{key}.{end}": m.get(f"{split}.ci.{metric.name}.{end}") for end in ("low", "high")}
    row[f"{OPERATING_POINT}.threshold"] = m.get(f"{OPERATING_POINT}.threshold")
    for rate in ("sensitivity", "specificity"):
        key = f"{OPERATING_POINT}.{rate}"
        row[key] = m.get(key)
        row |= {f"{key}.{end}": m.get(f"{OPERATING_POINT}.ci.{rate}.{end}") for end in ("low", "high")}
    return row


def setting(run: Mapping[str, Any]) -> str:
    """12 hex digits naming everything that made the run but its seeds: its params without ``train.seed``,
    ``seed`` and ``resolved.*``, its ``evaluate.*`` tags, its data version and occlusion. Runs with equal
    settings differ only in their seeds."""
    params = {k: v for k, v in run["params"].items() if k not in SEEDS and not k.startswith("resolved.")}
    tags = {k: v for k, v in run["tags"].items() if k.startswith("evaluate.") or k in ("data_version", "data.occlude")}
    text = json.dumps({"params": params, "tags": tags}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def seed_groups(rows: Sequence[Mapping[str, Any]], metric: Metric) -> list[dict[str, Any]]:
    """The rows grouped by ``setting``: per group its runs (in rank order), n, model, train seeds, and
    the mean and sample standard deviation (ddof=1; None for one run) of validation and test
    ``metric``. Best validation mean first (ties: the group of the better-ranked run first)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    out = [
        {
            "runs": [r["run_id"] for r in members],
            "n": len(members),
            "model": members[0]["model"],
            "seeds": [r["seed"] for r in members],
            "validation": _mean_sd([r[f"val.{metric.name}"] for r in members]),
            "test": _mean_sd([r[f"test.{metric.name}"] for r in members]),
        }
        for members in groups.values()
    ]
    sign = -1 if metric.higher_is_better else 1
    return sorted(out, key=lambda group: sign * group["validation"]["mean"])


def _mean_sd(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation (ddof=1) of the values that are there; sd None below two."""
    known = np.array([v for v in values if v is not None], dtype=float)
    if not len(known):
        return {"mean": None, "sd": None}
    return {"mean": number(known.mean()), "sd": number(known.std(ddof=1)) if len(known) > 1 else None}


def markdown(
    rows: Sequence[Mapping[str, Any]],
    metric: Metric,
    champion_run_id: str | None,
    intro: str = "",
    notes: Sequence[str] = (),
) -> str:
    """The leaderboard in Markdown with rows in the given order (the rank column: validation
    ``metric``), the champion's run marked with ★, ``intro`` above the table and ``notes`` (one
    paragraph or section each) below it."""
    lines = ["# Leaderboard", "", *([intro, ""] if intro else [])]
    if rows:
        shown = columns(metric)
        header = ["Champion", f"Rank (validation {metric.name})", *(title for _, title in shown)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rank, row in enumerate(rows, start=1):
            mark = "★" if champion_run_id is not None and row.get("run_id") == champion_run_id else ""
            cells = [mark, str(rank), *(_row_cell(row, key) for key, _ in shown)]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("_No runs yet._")
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def groups_markdown(groups: Sequence[Mapping[str, Any]], metric: Metric, names: Mapping[str, str]) -> str:
    """The section "Runs that differ only in train.seed": per group its model, n, validation and test
    ``metric`` as mean ± sd (n = 1: the value alone), its seeds and runs (``names``: run id → name)."""
    lines = [
        "## Runs that differ only in train.seed",
        "",
        "Runs on this data version whose params are equal but for `train.seed` and `seed` (and the `resolved.*`"
        " values the machine chose), with equal `evaluate.*` settings, form one group. Mean ± sample standard"
        " deviation (ddof = 1) over the group; one run shows its value alone.",
        "",
        "| Model | n | Validation " + metric.name + " | Test " + metric.name + " | Train seeds | Runs |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups:
        runs = ", ".join(names.get(run_id, run_id) for run_id in g["runs"])
        seeds = ", ".join(_cell(seed) for seed in g["seeds"])
        cells = [_cell(g["model"]), str(g["n"]), _spread(g["validation"]), _spread(g["test"]), seeds, _cell(runs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(stats: Mapping[str, float | None]) -> str:
    """``0.812 ± 0.013``; the mean alone without an sd."""
    return _cell(stats["mean"]) if _missing(stats["sd"]) else f"{_cell(stats['mean'])} ± {_cell(stats['sd'])}"


def plot(rows: Sequence[Mapping[str, Any]], metric: Metric, champion_run_id: str | None, path: Path) -> None:
    """Horizontal bars of validation ``metric`` per run in the given order (label: run name and model),
    with 95 % CI error bars where rows carry them, and the test value as a second marker; the
    champion's bar is highlighted."""
    n, key = len(rows), f"val.{metric.name}"
    fig, ((ax,),) = figure((8, 1.6 + 0.38 * max(n, 1)))
    values = np.array([row[key] for row in rows], dtype=float)
    tests = np.array([row.get(f"test.{metric.name}") for row in rows], dtype=float)
    lows, highs = (np.array([row.get(f"{key}.{end}") for row in rows], dtype=float) for end in ("low", "high"))
    champion = [champion_run_id is not None and row.get("run_id") == champion_run_id for row in rows]
    y = np.arange(n)
    ax.barh(y, values, height=0.7, color=["tab:orange" if c else "tab:blue" for c in champion])
    ci = np.isfinite(lows) & np.isfinite(highs)  # a missing bound (None) is NaN
    if ci.any():
        spread = np.vstack([values[ci] - lows[ci], highs[ci] - values[ci]]).clip(min=0)
        ax.errorbar(values[ci], y[ci], xerr=spread, fmt="none", ecolor="black", elinewidth=1, capsize=3)
    ax.scatter(tests, y, marker="D", s=22, color="black", zorder=3)  # NaN (no test value) is not drawn
    ax.set_yticks(y, [f"{row.get('run_name') or row.get('run_id')} ({row.get('model')})" for row in rows])
    for i, value in enumerate(values):
        ax.text(0.01, i, f"{value:.3f}", va="center", ha="left", color="white", fontsize=9, fontweight="bold")
    ax.invert_yaxis()
    direction = "" if metric.higher_is_better else ", lower is better"
    ax.set(
        xlim=(0, max(1.0, float(np.nanmax(np.concatenate([values, tests]), initial=0)) * 1.05)),
        xlabel=f"Validation {metric.name}" + (" (error bars: 95 % CI)" if ci.any() else "") + "; diamonds: test",
        title=f"Leaderboard by validation {metric.name}{direction}" + ("" if n else ": no evaluated runs yet"),
    )
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], marker="D", color="black", linestyle="none")]
    labels = [f"test {metric.name} (does not rank)"]
    if any(champion):
        handles.insert(0, Rectangle((0, 0), 1, 1, color="tab:orange"))
        labels.insert(0, "champion")
    ax.legend(handles=handles, labels=labels, loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(fig, path)


def _input(occlude: str | None) -> str:
    """What the run saw: the whole image, or the border only (an audit run, ``data.occlude`` > 0)."""
    side = float(occlude or 0)
    return f"border only (centre {side:.0%} blacked out; audit)" if side else "whole image"


def _int(value: float | None) -> int | None:
    """MLflow stores every metric as a float; counts read back as ints."""
    return None if value is None else int(value)


def _int_param(value: str | None) -> int | str | None:
    """A param (MLflow keeps params as text) as an int when it is one."""
    return int(value) if value is not None and value.lstrip("-").isdigit() else value


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
    ``<key>.low`` and ``<key>.high``."""
    value, low, high = row.get(key), row.get(f"{key}.low"), row.get(f"{key}.high")
    if _missing(value) or _missing(low) or _missing(high):
        return _cell(value)
    return f"{_cell(value)} [{_cell(low)}, {_cell(high)}]"
