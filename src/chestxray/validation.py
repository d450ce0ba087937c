"""Validate and clean the manifest with Great Expectations; rejected files get one reason each."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig
from tqdm import tqdm

from chestxray.config import DataConfig
from chestxray.images import inspect
from chestxray.io import atomic_path, write_json
from chestxray.labels import TASKS, apply_task
from chestxray.layouts import label_counts, read_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """An expectation on the per-image table; the rows it flags are rejected with ``reject_as``
    (a fixed reason, or the name of a column holding each row's reason), or only reported (None)."""

    expectation: Any
    reject_as: str | None


def validate_dataset(
    raw_dir: Path, data: DataConfig, manifest_csv: Path, rejected_csv: Path, metrics_json: Path
) -> dict[str, Any]:
    """Read ``raw_dir`` in ``data.layout``, label it for ``data.task``, decode every image, run
    the checks, write the clean and rejected tables."""
    table, reconciliation = read_layout(raw_dir, data.layout, data.csv)
    table, task = apply_task(table, data.task, data.label_map)
    infos = [inspect(Path(p)) for p in tqdm(table["path"], desc="decode", unit="img")]
    table = table.assign(
        format=[i.format or "" for i in infos],
        width=[i.width for i in infos],
        height=[i.height for i in infos],
        mode=[i.mode or "" for i in infos],
        error=[i.error or "" for i in infos],
    )
    checks = _checks(TASKS[data.task], has_metadata=bool(reconciliation))
    reasons, evaluated, failed = _run_checks(table, checks)
    rejected = pd.DataFrame({"path": table.loc[list(reasons), "path"], "reason": list(reasons.values())})
    clean = table.drop(index=list(reasons)).drop(columns=["error"]).reset_index(drop=True)
    rejects = label_counts(rejected, "reason")
    for reason, n in rejects.items():
        log.warning("rejected %d file(s): %s (see %s)", n, reason, rejected_csv)
    metrics = {
        "raw": label_counts(table),
        "clean": label_counts(clean),
        "rejected": rejects,
        "metadata": reconciliation,
        "task": task,
        "expectations": {"evaluated": evaluated, "failed": failed},
    }
    for frame, path in ((clean, manifest_csv), (rejected, rejected_csv)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    write_json(metrics_json, metrics)
    log.info("validated %d images: %d clean, %d rejected", len(table), len(clean), len(rejected))
    return metrics


def _checks(classes: tuple[str, ...], has_metadata: bool) -> list[Check]:
    e = gx.expectations
    checks = [
        Check(e.ExpectColumnValuesToNotBeNull(column="path"), None),
        Check(e.ExpectColumnValuesToBeUnique(column="path"), "duplicate_path"),
        Check(e.ExpectColumnValuesToBeInSet(column="error", value_set=[""]), "error"),
        Check(e.ExpectColumnValuesToBeInSet(column="label", value_set=list(classes)), "label_not_in_task"),
    ]
    if has_metadata:  # every file has a metadata row (case-insensitively): reported, not rejected
        checks.append(Check(e.ExpectColumnValuesToBeInSet(column="in_metadata", value_set=[True]), None))
    return checks


def _run_checks(table: pd.DataFrame, checks: list[Check]) -> tuple[dict[int, str], int, int]:
    """Run the suite; return (row index → first reject reason, expectations evaluated, failed)."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("manifest")
        .add_dataframe_asset("images")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="images", expectations=[c.expectation for c in checks]))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="images", data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": table}, result_format={"result_format": "COMPLETE"})
    by_id = {saved.id: check for saved, check in zip(suite.expectations, checks, strict=True)}
    reasons: dict[int, str] = {}
    for outcome in result.results:
        if outcome.success:
            continue
        check = by_id[outcome.expectation_config.id]
        log.warning("expectation failed: %s", outcome.expectation_config.type)
        if check.reject_as is None:
            continue
        for i in outcome.result.get("unexpected_index_list") or []:
            reason = table.at[i, check.reject_as] if check.reject_as in table.columns else check.reject_as
            reasons.setdefault(int(i), str(reason))
    stats = result.statistics
    return reasons, int(stats["evaluated_expectations"]), int(stats["unsuccessful_expectations"])

