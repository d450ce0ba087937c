"""Compare every MLflow run on the same data version: the leaderboard ranked by validation
``compare.metric`` (test shown beside it, never ranking), McNemar's test for the top two on the test
set (reported, deciding nothing), the groups of runs that differ only in their seeds, and the
registry alias ``champion``: it moves by itself only to a run on the champion's own data version that
is better on validation by at least ``compare.min_delta``; ``promote`` moves it explicitly. One compare or
promote at a time reads the champion and moves it (``tracking.champion_lock``), also when queued
experiments or a team's members compare at once on one store."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from scipy.stats import binomtest

from chestxray import paths, tracking
from chestxray.config import CompareSettings
from chestxray.errors import UserError
from chestxray.io import read_json, write_text
from chestxray.judge import audit_runs, leaderboard, metrics, plots_page
from chestxray.judge.metrics import Metric
from chestxray.records import write_record

log = logging.getLogger(__name__)

CHAMPION = "champion"  # the registry alias that predict and serving load
ALPHA = 0.05  # McNemar: significance level
PREDICTIONS = "evaluate/predictions.csv"  # the run's test-set predictions (path, actual, predicted, …)
TOLERANCE = 1e-9  # metrics are logged to 6 decimals: a gain of min_delta must not fail on float rounding


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
    """McNemar's test for the first two rows (by validation) on their logged test predictions: a
    test-set comparison that is reported and decides nothing. None (with a warning) with fewer than
    two rows, a missing predictions file, or different test images."""
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
    """The version behind ``<registered_model>@champion``: version, run_id, run_name, model, data_version
    and its run's validation and test ``compare.metric`` (None where missing); None if there is no champion."""
    found = tracking.alias_version(cfg.registered_model, CHAMPION)
    if found is None:
        return None
    run = tracking.get_run(found["run_id"]) or {"run_name": None, "params": {}, "metrics": {}, "tags": {}}
    return {**found, **_facts(run, cfg.metric)}


def _facts(run: dict[str, Any], metric: str) -> dict[str, Any]:
    """What the champion entry tells of a run: name, model, data version, validation and test ``metric``."""
    return {
        "run_name": run["run_name"],
        "model": run["tags"].get("model", run["params"].get("model")),
        "data_version": run["tags"].get("data_version"),
        "validation": run["metrics"].get(f"val.{metric}"),
        "test": run["metrics"].get(f"test.{metric}"),
    }


def promote_command(run_id: str) -> str:
    """The command that makes ``run_id``'s model the champion whatever compare says."""
    return f"`python -m chestxray promote {run_id}`"


class Decision(NamedTuple):
    """What ``challenge`` decides: whether the alias moves, why, and whether only ``promote`` can move it."""

    moved: bool
    reason: str
    needs_promote: bool = False


def challenge(
    best: dict[str, Any],
    version: int,
    current: dict[str, Any] | None,
    data_version: str,
    metric: Metric,
    min_delta: float,
) -> Decision:
    """Whether the alias moves to ``version`` (the best run's), and why. It moves when there is no
    champion yet, to a newer model of the champion's own run, or when the champion is on
    ``data_version`` and the best run's validation ``metric`` is better than the champion's by at
    least ``min_delta`` (and by more than nothing). A champion from other data, or without a
    validation score, stays: only ``promote`` replaces it. Test metrics are not read."""
    run_id, name, value = best["run_id"], metric.name, best[f"val.{metric.name}"]
    if current is None:
        return Decision(
            True, f"no champion yet: v{version} (run {run_id}, validation {name} {value:.4f}) becomes champion"
        )
    if current["version"] == version:
        return Decision(False, f"champion stays v{version} (run {run_id}): it is already the best run's model")
    if current["run_id"] == run_id:
        return Decision(
            True, f"v{version} is a newer model of the champion's run {run_id}: it replaces v{current['version']}"
        )
    held = f"champion v{current['version']} (run {current['run_id']})"
    if current["data_version"] != data_version:
        return Decision(
            False,
            f"{held} is from data version {current['data_version']}; the best run here, {run_id} (validation {name}"
            f" {value:.4f}), is on data version {data_version}: scores on different data cannot be compared, so the"
            f" champion stays. To make it champion: {promote_command(run_id)}",
            needs_promote=True,
        )
    if current["validation"] is None:
        return Decision(
            False,
            f"{held} has no validation {name} (evaluated before validation was scored), so it cannot be compared:"
            f" the champion stays. To make run {run_id} (validation {name} {value:.4f}) champion:"
            f" {promote_command(run_id)}",
            needs_promote=True,
        )
    gain = leaderboard.improvement(metric, value, current["validation"])
    compared = f"validation {name} {value:.4f} vs {current['validation']:.4f}, better by {gain:+.4f}"
    if gain > TOLERANCE and gain >= min_delta - TOLERANCE:
        return Decision(True, f"v{version} (run {run_id}) beats {held}: {compared} ≥ compare.min_delta {min_delta:g}")
    return Decision(
        False,
        f"{held} stays: the best run {run_id} has {compared}, which is not a positive gain of at least"
        f" compare.min_delta {min_delta:g}",
    )


def version_tags(run: dict[str, Any], metric: str) -> dict[str, str]:
    """Registry tags of a run's model version: its data version, data source, Kaggle slug or local name (where
    the run has them), validation and test ``metric`` (where evaluated)."""
    tags = {k: run["tags"][k] for k in ("data_version", "data.source", "data.slug", "data.name") if k in run["tags"]}
    scores = {f"{split}.{metric}": run["metrics"].get(f"{split}.{metric}") for split in leaderboard.SPLITS}
    return tags | {k: str(v) for k, v in scores.items() if v is not None}


def register(run: dict[str, Any], cfg: CompareSettings) -> int | None:
    """The version of ``cfg.registered_model`` holding the run's logged model 'model' (registered if
    new), tagged with ``version_tags``; None if the run logged no model."""
    tags = version_tags(run, cfg.metric)
    registered = tracking.register_model(cfg.registered_model, run["run_id"], tags)
    if registered is None:
        return None
    version, created = registered
    if not created:
        tracking.set_version_tags(cfg.registered_model, version, tags)
    log.info(
        "%s v%d of %s for run %s", "registered" if created else "found", version, cfg.registered_model, run["run_id"]
    )
    return version


def update_champion(best: dict[str, Any] | None, data_version: str, cfg: CompareSettings) -> dict[str, Any] | None:
    """Register the best run's model (once) and move ``champion`` to it if ``challenge`` says so.
    Returns the champion afterwards (``_champion``), or None if there is none."""
    current = current_champion(cfg)
    if best is None:
        return _kept(cfg.registered_model, current, f"no run on data version {data_version} has validation scores")
    run = tracking.get_run(best["run_id"])
    version = register(run, cfg)
    if version is None:
        reason = (
            f"the best run {best['run_id']} logged no model 'model' (evaluated before models were logged?):"
            " not registered"
        )
        log.warning("%s", reason)
        return _kept(cfg.registered_model, current, reason)
    moved, reason, needs_promote = challenge(
        best, version, current, data_version, metrics.get(cfg.metric), cfg.min_delta
    )
    log.log(logging.WARNING if needs_promote else logging.INFO, "%s", reason)
    if not moved:
        return _champion(cfg.registered_model, current, False, reason)
    tracking.set_alias(cfg.registered_model, CHAMPION, version)
    return _champion(
        cfg.registered_model, {"version": version, "run_id": run["run_id"], **_facts(run, cfg.metric)}, True, reason
    )


def promote(run_id: str, cfg: CompareSettings) -> dict[str, Any]:
    """Point ``<cfg.registered_model>@champion`` at the run's logged model 'model' (registered first
    if it is not yet), whatever its data version or scores. Returns the champion entry."""
    run = tracking.get_run(run_id)
    if run is None:
        raise UserError(f"promote: no run {run_id} in {tracking.tracking_uri()}")
    if audit_runs.is_audit(run):
        raise UserError(
            f"promote: run {run_id} is a border-only audit run (data.occlude {run['tags'].get('data.occlude')}): it"
            " never saw the centre of the images and cannot be champion; promote a run trained on whole images"
        )
    with tracking.champion_lock(cfg.registered_model):
        version = register(run, cfg)
        if version is None:
            raise UserError(f"promote: run {run_id} logged no model 'model' (not evaluated yet?); nothing to promote")
        current = current_champion(cfg)
        tracking.set_alias(cfg.registered_model, CHAMPION, version)
    was = "no champion" if current is None else _describe(current)
    new = {"version": version, "run_id": run_id, **_facts(run, cfg.metric)}
    reason = f"promoted by hand: {cfg.registered_model}@{CHAMPION} was {was}, is now {_describe(new)}"
    log.info("%s", reason)
    return _champion(cfg.registered_model, new, current is None or current["version"] != version, reason)


def _describe(version: dict[str, Any]) -> str:
    """``v3 (run <id>, data version <v>)``."""
    return f"v{version['version']} (run {version['run_id']}, data version {version['data_version']})"


def _kept(name: str, current: dict[str, Any] | None, reason: str) -> dict[str, Any] | None:
    """The champion left as it was (None if there is none)."""
    return None if current is None else _champion(name, current, False, reason)


def _champion(name: str, version: dict[str, Any], moved: bool, reason: str) -> dict[str, Any]:
    """The ``champion`` entry of compare.json."""
    keys = ("version", "run_id", "run_name", "model", "data_version", "validation", "test")
    return {"name": name, **{k: version[k] for k in keys}, "moved": moved, "reason": reason}


def compare_runs(cfg: CompareSettings, root: Path = Path(".")) -> dict[str, Any]:
    """Rank the runs on the data version of ``root``'s last evaluation by validation ``compare.metric``,
    test the top two, group seeds, update the champion; write ``reports/compare.json`` (headline:
    ``metrics/compare.json``), the Markdown leaderboard and its bar chart, and the page `dvc plots` fills."""
    metric = metrics.get(cfg.metric)
    data_version = read_json(root / paths.EVALUATE_JSON)["data_version"]
    # One compare at a time reads the runs and decides (two queued experiments may compare at once): each
    # sees the runs every earlier one saw, and the champion they left
    with tracking.champion_lock(cfg.registered_model):
        runs = tracking.runs_for(data_version)
        rows = leaderboard.rows(runs, metric)
        contenders = [row for row in rows if not row["audit"]]  # audit runs are ranked, never champion
        best = contenders[0] if contenders else None
        champion = update_champion(best, data_version, cfg)
        if champion is not None and champion["data_version"] == data_version:
            audit_runs.refresh_card(champion["run_id"], data_version)
    unranked = [r for r in runs if f"test.{metric.name}" in r["metrics"] and not leaderboard.ranked(r, metric)]
    keys = ("run_id", "run_name", "model", f"val.{metric.name}", f"test.{metric.name}")
    summary = {
        "data_version": data_version,
        "metric": cfg.metric,
        "ranked_on": "validation",
        "min_delta": cfg.min_delta,
        "n_runs": len(rows),
        "best": {k: best[k] for k in keys} if best else None,
        "champion": champion,
        "unranked": [{"run_id": r["run_id"], "run_name": r["run_name"]} for r in unranked],
        "audit_runs": [row["run_id"] for row in rows if row["audit"]],
        "mcnemar": compare_top_two(contenders),
        "seed_groups": leaderboard.seed_groups(rows, metric),
        "leaderboard": rows,
    }
    champion_run = champion["run_id"] if champion else None
    notes = _notes(summary, rows, contenders, metric)
    board = leaderboard.markdown(rows, metric, champion_run, _intro(summary), notes)
    write_text(root / paths.LEADERBOARD_MD, board)
    leaderboard.plot(rows, metric, champion_run, root / paths.LEADERBOARD_PNG)
    write_record("compare", summary, root / paths.COMPARE_JSON, root / paths.COMPARE_METRICS)
    plots_page.write_page(root / paths.PLOTS_TEMPLATE_HTML)
    if best:
        log.info(
            "best of %d candidate run(s) on validation: %s (%s), validation %s %.4f",
            len(contenders),
            best["run_name"],
            best["model"],
            cfg.metric,
            best[f"val.{cfg.metric}"],
        )
    return summary


def _intro(summary: dict[str, Any]) -> str:
    """The leaderboard's first paragraphs: data version, store, ranking, the promotion rule, the champion."""
    name = summary["metric"]
    intro = (
        f"Data version `{summary['data_version']}`: {summary['n_runs']} run(s)"
        f" in {leaderboard.store(tracking.tracking_uri(), tracking.repo_root())},"
        f" ranked by validation {name} (ties: the earlier run first). Columns marked (test) are scored on the"
        " test set and shown beside it: they never rank a run nor move the champion."
    )
    if summary["unranked"]:
        names = ", ".join(r["run_name"] for r in summary["unranked"])
        intro += (
            f" Not listed: {len(summary['unranked'])} run(s) evaluated before validation was scored ({names});"
            " evaluate them again to rank them."
        )
    if summary["audit_runs"]:
        intro += (
            f" {len(summary['audit_runs'])} of them are border-only audit runs (column Input): trained and tested"
            " without the centre of the images, they show how much of the score needs no lungs, and never become"
            " champion."
        )
    rule = (
        f"The champion moves by itself only to a run on its own data version whose validation {name} is better"
        f" by at least compare.min_delta = {summary['min_delta']:g}, or to a newer model of its own run; a"
        " champion from another data version stays until `python -m chestxray promote RUN_ID`."
    )
    c = summary["champion"]
    if c is None:
        return f"{intro}\n\n{rule} No champion yet."
    scores = ", ".join(f"{split} {name} {_value(c[split])}" for split in ("validation", "test"))
    return f"{intro}\n\n{rule}" + (
        f" Champion ★: `{c['name']}@{CHAMPION}` → version {c['version']}, run {c['run_name']} (`{c['run_id']}`,"
        f" {c['model']}, data version {c['data_version']}, {scores}); {'moved' if c['moved'] else 'not moved'}"
        f" this time: {c['reason']}."
    )


def _value(value: float | None) -> str:
    """A score to 4 decimals, or a dash."""
    return leaderboard.MISSING if value is None else f"{value:.4f}"


def _notes(
    summary: dict[str, Any], rows: list[dict[str, Any]], contenders: list[dict[str, Any]], metric: Metric
) -> list[str]:
    """Below the table: McNemar's test of the top two ``contenders`` (the rows but audit runs) on the
    test set, and the seed groups."""
    if not rows:
        return []
    names = {row["run_id"]: row["run_name"] for row in rows}
    groups = leaderboard.groups_markdown(summary["seed_groups"], metric, names)
    if len(contenders) < 2:
        return [groups]
    first, second = contenders[0]["run_name"], contenders[1]["run_name"]
    t = summary["mcnemar"]
    if t is None:
        return [f"McNemar's test: #1 {first} and #2 {second} could not be compared (see the stage log).", groups]
    verdict = "differ significantly" if t["significant"] else "do not differ significantly"
    note = (
        f"McNemar's exact test on the test set (reported; it decides nothing), #1 {first} vs #2 {second} on the same"
        f" {t['n']} test images: {t['a_only_correct']} right only by #1, {t['b_only_correct']} only by #2,"
        f" p = {t['p_value']:.4g}: on test they {verdict} (α = {ALPHA})."
    )
    return [note, groups]
