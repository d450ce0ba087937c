"""Compare every MLflow run on the same data version: a leaderboard naming the best by macro-F1."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chestxray import tracking
from chestxray.io import atomic_path, write_json
from chestxray.labels import COVID
from chestxray.reports import leaderboard_markdown

log = logging.getLogger(__name__)

RANK_BY = "test.macro_f1"


def leaderboard_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluated runs as leaderboard rows, best macro-F1 first (ties: the earlier run first)."""
    rows = []
    for r in runs:
        m, p = r["metrics"], r["params"]
        if RANK_BY not in m:
            continue
        rows.append(
            {
                "run_id": r["run_id"],
                "run_name": r["run_name"],
                "model": r["tags"].get("model", p.get("model")),
                "macro_f1": m[RANK_BY],
                "accuracy": m.get("test.accuracy"),
                "roc_auc_macro": m.get("test.roc_auc_macro"),
                "covid_sensitivity": m.get(f"test.per_class.{COVID}.recall"),
                "covid_specificity": m.get(f"test.per_class.{COVID}.specificity"),
                "weights": p.get("train.weights"),
                "image_size": p.get("data.image_size"),
                "epochs": _int(m.get("train.epochs_run")),
                "train_seconds": m.get("train.train_seconds"),
                "params": _int(m.get("train.params")),
                "start_time": datetime.fromtimestamp(r["start_time"] / 1000, timezone.utc).isoformat(timespec="seconds"),
            }
        )
    return sorted(rows, key=lambda row: (-row["macro_f1"], row["start_time"]))


def compare_runs(data_version: str, metrics_json: Path, leaderboard_md: Path) -> dict[str, Any]:
    """Write ``metrics/compare.json`` and the Markdown leaderboard for ``data_version``."""
    rows = leaderboard_rows(tracking.runs_for(data_version))
    best = rows[0] if rows else None
    summary = {
        "data_version": data_version,
        "n_runs": len(rows),
        "best": {k: best[k] for k in ("run_id", "run_name", "model", "macro_f1")} if best else None,
        "leaderboard": rows,
    }
    intro = f"Data version `{data_version}`: {len(rows)} evaluated run(s) in {tracking.tracking_uri()}, ranked by test macro-F1."
    with atomic_path(leaderboard_md) as tmp:
        tmp.write_text(leaderboard_markdown(rows, best["run_id"] if best else None, intro), encoding="utf-8")
    write_json(metrics_json, summary)
    if best:
        log.info("best of %d run(s): %s (%s), macro-F1 %.4f", len(rows), best["run_name"], best["model"], best["macro_f1"])
    return summary


def _int(value: float | None) -> int | None:
    """MLflow stores every metric as a float; counts read back as ints."""
    return None if value is None else int(value)
