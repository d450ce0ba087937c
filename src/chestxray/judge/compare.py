"""Compare every MLflow run on the same data version: the leaderboard ranked by ``compare.metric``,
McNemar's test for the top two, and the registry alias ``champion`` on the best model when it
beats the current champion."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import binomtest

from chestxray import paths, tracking
from chestxray.config import CompareSettings
from chestxray.io import read_json, write_json, write_text
from chestxray.judge import leaderboard, metrics
from chestxray.judge.metrics import Metric

log = logging.getLogger(__name__)

CHAMPION = "champion"  # the registry alias that predict and serving load
ALPHA = 0.05  # McNemar: significance level
PREDICTIONS = "evaluate/predictions.csv"  # the run's test-set predictions (path, actual, predicted, …)


def mcnemar(first: pd.DataFrame, second: pd.DataFrame) -> dict[str, Any] | None:
    """McNemar's exact test on two models' predictions (columns path, actual, predicted) of the
    same test images, joined on path: b = images only the first gets right, c = only the second;
    p is the two-sided binomial test of b in b + c trials at 1/2. None if the images or their
    labels differ."""
    a, b = (table.set_index("path").sort_index() for table in (first, second))
    if not a.index.is_unique or not a.index.equals(b.index) or not a["actual"].equals(b["actual"]):
        return None
    right_a, right_b = a["predicted"] == a["actual"], b["predicted"] == b["actual"]
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p_value = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return {
        "n": len(a),
        "a_only_correct": only_a,
        "b_only_correct": only_b,
        "p_value": p_value,
        "significant": p_value < ALPHA,
    }


def compare_top_two(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """McNemar's test for the first two rows on their logged test predictions; None (with a
    warning) with fewer than two rows, a missing predictions file, or different test images."""
    if len(rows) < 2:
        return None
    first, second = rows[0], rows[1]
    names = f"{first['run_name']} ({first['run_id']}) and {second['run_name']} ({second['run_id']})"
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        files = [
            tracking.download_artifact(row["run_id"], PREDICTIONS, Path(tmp) / row["run_id"]) for row in (first, second)
        ]
        if None in files:
            log.warning(
                "no McNemar test for %s: a run has no %s artifact (evaluated before it was logged?)", names, PREDICTIONS
            )
            return None
        tables = [
            pd.read_csv(f, usecols=["path", "actual", "predicted"], dtype=str, keep_default_na=False) for f in files
        ]
    result = mcnemar(*tables)
    if result is None:
        log.warning(
            "no McNemar test for %s: their %s differ in images or labels (not the same test set)", names, PREDICTIONS
        )
        return None
    return {
        "run_a": first["run_id"],
        "run_b": second["run_id"],
        "model_a": first["model"],
        "model_b": second["model"],
        **result,
    }


def current_champion(cfg: CompareSettings) -> dict[str, Any] | None:
    """The version behind ``<registered_model>@champion``: version, run_id, model, data_version
    and its run's ``test.<metric>`` (None if unset); None if there is no champion."""
    found = tracking.alias_version(cfg.registered_model, CHAMPION)
    if found is None:
        return None
    run = tracking.get_run(found["run_id"])
    return {
        **found,
        "run_name": run["run_name"],
        "model": run["tags"].get("model", run["params"].get("model")),
        "data_version": run["tags"].get("data_version"),
        "value": run["metrics"].get(f"test.{cfg.metric}"),
    }


def challenge(
    best: dict[str, Any], version: int, current: dict[str, Any] | None, data_version: str, metric: Metric
) -> tuple[bool, str]:
    """Whether the alias moves to ``version`` (the best run's), and why: no champion yet, a newer
    model of the champion's own run, a champion from other data (not comparable), or a strictly
    better ``metric``."""
    value, name = best[metric.name], metric.name
    if current is None:
        return True, f"no champion yet: v{version} (run {best['run_id']}, {name} {value:.4f}) becomes champion"
    if current["version"] == version:
        return False, f"champion stays v{version} (run {best['run_id']}): it is already the best run's model"
    if current["run_id"] == best["run_id"]:
        return (
            True,
            f"v{version} is a newer model of the champion's run {best['run_id']}: it replaces v{current['version']}",
        )
    if current["data_version"] != data_version:
        return True, (
            f"champion v{current['version']} (run {current['run_id']}) was evaluated on data version"
            f" {current['data_version']}, not {data_version}: metrics on different test sets cannot be compared,"
            f" so v{version} (run {best['run_id']}, {name} {value:.4f}) takes over"
        )
    if current["value"] is None:
        return (
            True,
            f"champion v{current['version']} (run {current['run_id']}) has no test.{name}: v{version} takes over",
        )
    beats, holds = (">", "≥") if metric.higher_is_better else ("<", "≤")
    if leaderboard.better(metric, value, current["value"]):
        return True, (
            f"v{version} (run {best['run_id']}) beats champion v{current['version']}: {name} {value:.4f}"
            f" {beats} {current['value']:.4f}"
        )
    return False, (
        f"champion stays v{current['version']} (run {current['run_id']}, {name} {current['value']:.4f}"
        f" {holds} {value:.4f} of run {best['run_id']})"
    )


def update_champion(best: dict[str, Any] | None, data_version: str, cfg: CompareSettings) -> dict[str, Any] | None:
    """Register the best run's model (once) and move ``champion`` to it if ``challenge`` says so.
    Returns the champion afterwards (name, version, run_id, run_name, model, value, moved,
    reason), or None if there is none."""
    current = current_champion(cfg)
    if best is None:
        return _kept(cfg.registered_model, current, f"no evaluated run on data version {data_version}")
    tags = {"data_version": data_version, f"test.{cfg.metric}": str(best[cfg.metric])}
    registered = tracking.register_model(cfg.registered_model, best["run_id"], tags)
    if registered is None:
        reason = (
            f"the best run {best['run_id']} logged no model 'model' (evaluated before models were logged?):"
            " not registered"
        )
        log.warning("%s", reason)
        return _kept(cfg.registered_model, current, reason)
    version, created = registered
    log.info(
        "%s v%d of %s for run %s", "registered" if created else "found", version, cfg.registered_model, best["run_id"]
    )
    moved, reason = challenge(best, version, current, data_version, metrics.get(cfg.metric))
    superseded = moved and current is not None and current["data_version"] != data_version
    log.log(logging.WARNING if superseded else logging.INFO, "%s", reason)
    if not moved:
        return _champion(cfg.registered_model, current, False, reason)
    tracking.set_alias(cfg.registered_model, CHAMPION, version)
    new = {
        "version": version,
        "run_id": best["run_id"],
        "run_name": best["run_name"],
        "model": best["model"],
        "value": best[cfg.metric],
    }
    return _champion(cfg.registered_model, new, True, reason)


def _kept(name: str, current: dict[str, Any] | None, reason: str) -> dict[str, Any] | None:
    """The champion left as it was (None if there is none)."""
    return None if current is None else _champion(name, current, False, reason)


def _champion(name: str, version: dict[str, Any], moved: bool, reason: str) -> dict[str, Any]:
    """The ``champion`` entry of compare.json."""
    keys = ("version", "run_id", "run_name", "model", "value")
    return {"name": name, **{k: version[k] for k in keys}, "moved": moved, "reason": reason}


def compare_runs(cfg: CompareSettings, root: Path = Path(".")) -> dict[str, Any]:
    """Rank the runs on the data version of ``root``'s last evaluation, test the top two, update the
    champion; write ``metrics/compare.json``, the Markdown leaderboard and its bar chart."""
    metric = metrics.get(cfg.metric)
    data_version = read_json(root / paths.EVALUATE_JSON)["data_version"]
    rows = leaderboard.rows(tracking.runs_for(data_version), metric)
    best = rows[0] if rows else None
    champion = update_champion(best, data_version, cfg)
    test = compare_top_two(rows)
    summary = {
        "data_version": data_version,
        "metric": cfg.metric,
        "n_runs": len(rows),
        "best": {k: best[k] for k in ("run_id", "run_name", "model", "macro_f1", cfg.metric)} if best else None,
        "champion": champion,
        "mcnemar": test,
        "leaderboard": rows,
    }
    champion_run = champion["run_id"] if champion else None
    write_text(
        root / paths.LEADERBOARD_MD, leaderboard.markdown(rows, champion_run, _intro(summary), _notes(summary, rows))
    )
    leaderboard.plot(rows, metric, champion_run, root / paths.LEADERBOARD_PNG)
    write_json(root / paths.COMPARE_JSON, summary)
    if best:
        log.info(
            "best of %d run(s): %s (%s), %s %.4f",
            len(rows),
            best["run_name"],
            best["model"],
            cfg.metric,
            best[cfg.metric],
        )
    return summary


def _intro(summary: dict[str, Any]) -> str:
    """The leaderboard's first paragraph: data version, store, ranking, and the champion."""
    intro = (
        f"Data version `{summary['data_version']}`: {summary['n_runs']} evaluated run(s) in {tracking.tracking_uri()},"
        f" ranked by test {summary['metric']} (ties: the earlier run first)."
    )
    c = summary["champion"]
    if c is None:
        return intro + " No champion yet."
    value = "–" if c["value"] is None else f"{c['value']:.4f}"
    return intro + (
        f" Champion ★: `{c['name']}@{CHAMPION}` → version {c['version']}, run {c['run_name']} (`{c['run_id']}`,"
        f" {c['model']}, {summary['metric']} {value}); {'moved' if c['moved'] else 'not moved'} this time:"
        f" {c['reason']}."
    )


def _notes(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The paragraph under the table: whether the top two differ significantly (McNemar)."""
    if len(rows) < 2:
        return []
    first, second = rows[0]["run_name"], rows[1]["run_name"]
    t = summary["mcnemar"]
    if t is None:
        return [f"McNemar's test: #1 {first} and #2 {second} could not be compared (see the stage log)."]
    verdict = "differ significantly" if t["significant"] else "do not differ significantly"
    note = (
        f"McNemar's exact test, #1 {first} vs #2 {second} on the same {t['n']} test images: {t['a_only_correct']}"
        f" right only by #1, {t['b_only_correct']} only by #2, p = {t['p_value']:.4g}: they {verdict} (α = {ALPHA})."
    )
    return [note]
