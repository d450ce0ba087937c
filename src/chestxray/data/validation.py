"""Validate and clean the dataset with Great Expectations; each rejected file gets one reason.

Two suites run on a per-image table computed by one decode of every image: ``images`` (metadata,
decoding, format, mode, size, aspect ratio, blank images) and, on the images that pass it,
``duplicates`` (the same or a near-identical image under two labels). Their results are Data Docs
in ``reports/validation/``, which go to MLflow with a ``validate`` run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from chestxray import paths, tracking
from chestxray.config import DataSettings, ValidateSettings, flatten
from chestxray.data.duplicates import find_duplicates
from chestxray.data.images import ImageInfo, inspect_all
from chestxray.data.labels import apply_task, imbalance, label_counts
from chestxray.data.layouts import read_layout
from chestxray.errors import UserError
from chestxray.io import atomic_path, write_csv
from chestxray.records import write_record
from chestxray.tasks import TASKS

log = logging.getLogger(__name__)

FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF")  # by content; MPO is the JPEG some cameras write
MODES = ("L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I;16N", "I")  # RGB may hold grey content
MEASURES = ("format", "width", "height", "mode", "mean", "std", "sha256", "phash")
REJECTED_COLUMNS = ("path", "reason", "label", "detail")


@dataclass(frozen=True)
class Check:
    """An expectation; the rows it flags are rejected with ``reject_as`` (a fixed reason, or the
    name of a column holding each row's reason), or only reported (None)."""

    expectation: Any
    reject_as: str | None


def validate_dataset(data: DataSettings, rules: ValidateSettings, out: Path = Path(".")) -> dict[str, Any]:
    """Validate ``out``'s ``data/raw`` (read in ``data.layout``, labelled for ``data.task``); write under
    ``out`` the clean manifest, the rejected table, ``reports/validate.json`` (headline:
    ``metrics/validate.json``) and Data Docs. Above ``rules.max_reject_fraction`` rejected, stop
    (UserError) after writing the rejected table, the record and Data Docs, but not the manifest."""
    raw_dir = out / paths.RAW_DIR
    table, reconciliation = read_layout(raw_dir, data.layout, data.csv)
    table, task = apply_task(table, data.task, data.label_map)
    classes = TASKS[data.task]
    _require_classes(label_counts(table), classes, raw_dir, data.task, "has no images")
    table = _measure(table)

    with atomic_path(out / paths.VALIDATION_DOCS_DIR, is_dir=True) as docs:
        suites = _Suites(docs)
        reasons = suites.run("images", _image_checks(classes, rules, has_metadata=bool(reconciliation)), table)
        kept = table.drop(index=list(reasons))
        duplicates = find_duplicates(list(kept["sha256"]), list(kept["phash"]), rules.near_duplicate_distance)
        kept = kept.assign(dup_group=[f"dup-{g:05d}" if g >= 0 else "" for g in duplicates.group])
        kept = kept.assign(conflict=_label_conflicts(kept))
        reasons |= suites.run("duplicates", [Check(_in_set("conflict", [False]), "duplicate_label_conflict")], kept)

    rejected = _rejected_table(table, kept, reasons)
    clean = kept.drop(index=list(reasons), errors="ignore").drop(columns=["error", "conflict"]).reset_index(drop=True)
    clean = clean.astype({"width": int, "height": int})
    fraction = len(rejected) / len(table)
    metrics = {
        "raw": label_counts(table),
        "clean": label_counts(clean),
        "rejected": label_counts(rejected, "reason"),
        "duplicates": {
            "exact_groups": duplicates.exact_groups,
            "near_groups": duplicates.near_groups,
            "grouped_images": int((clean["dup_group"] != "").sum()),
        },
        "expectations": suites.statistics,
        "gate": {
            "max_reject_fraction": rules.max_reject_fraction,
            "reject_fraction": round(fraction, 4),
            "passed": fraction <= rules.max_reject_fraction,
        },
        "images": {"formats": label_counts(clean, "format"), "modes": label_counts(clean, "mode")},
        "metadata": reconciliation,
        "task": task,
    }
    for reason, n in metrics["rejected"].items():
        log.warning("rejected %d file(s): %s (see %s)", n, reason, out / paths.REJECTED_CSV)
    write_csv(out / paths.REJECTED_CSV, rejected)
    if not metrics["gate"]["passed"]:
        write_record("validate", metrics, out / paths.VALIDATE_JSON, out / paths.VALIDATE_METRICS)
        raise UserError(
            f"{len(rejected)} of {len(table)} images rejected ({fraction:.1%}), above validate.max_reject_fraction "
            f"({rules.max_reject_fraction:.1%}); see {out / paths.REJECTED_CSV} for each file's reason,"
            " fix the data or "
            "raise the threshold"
        )
    _require_classes(
        metrics["clean"], classes, raw_dir, data.task, f"has no clean images (see {out / paths.REJECTED_CSV})"
    )
    metrics["imbalance"] = imbalance({c: metrics["clean"].get(c, 0) for c in classes})
    write_csv(out / paths.MANIFEST_CSV, clean)
    write_record("validate", metrics, out / paths.VALIDATE_JSON, out / paths.VALIDATE_METRICS)
    settings = {"data": data.model_dump(include={"layout", "task", "label_map", "csv"}), "validate": rules.model_dump()}
    _track(metrics, flatten(settings), out)
    log.info("validated %d images: %d clean, %d rejected", len(table), len(clean), len(rejected))
    return metrics


def _require_classes(counts: dict[str, int], classes: tuple[str, ...], raw_dir: Path, task: str, what: str) -> None:
    missing = [c for c in classes if not counts.get(c)]
    if missing:
        raise UserError(
            f"{raw_dir}: class {', '.join(repr(c) for c in missing)} of data.task {task} {what}; "
            "add its images (an empty or missing class folder?) or choose a data.task / data.label_map without it"
        )


def _measure(table: pd.DataFrame) -> pd.DataFrame:
    """Decode every image once (in parallel) and add ``MEASURES`` and ``error`` columns."""
    infos: list[ImageInfo] = inspect_all(list(table["path"]))
    columns = {name: [getattr(i, name) for i in infos] for name in MEASURES}
    columns["error"] = [i.error or "" for i in infos]
    return table.assign(**columns).astype({"width": "Int64", "height": "Int64", "mean": float, "std": float})


def _image_checks(classes: tuple[str, ...], rules: ValidateSettings, has_metadata: bool) -> list[Check]:
    """The ``images`` suite, in order of precedence: a file gets the reason of the first check it fails."""
    e = gx.expectations
    checks = [
        Check(e.ExpectColumnValuesToNotBeNull(column="path"), None),
        Check(_in_set("error", [""]), "error"),
        Check(e.ExpectColumnValuesToBeUnique(column="path"), "duplicate_path"),
        Check(_in_set("label", list(classes)), "label_not_in_task"),
        Check(e.ExpectCompoundColumnsToBeUnique(column_list=["label", "file_name"]), None),
        Check(_in_set("format", list(FORMATS)), "unsupported_format"),
        Check(_in_set("mode", list(MODES)), "unsupported_mode"),
        Check(e.ExpectColumnValuesToBeBetween(column="short_side", min_value=rules.min_side), "too_small"),
        Check(e.ExpectColumnValuesToBeBetween(column="long_side", max_value=rules.max_side), "too_large"),
        Check(e.ExpectColumnValuesToBeBetween(column="aspect", max_value=rules.max_aspect), "bad_aspect_ratio"),
        Check(e.ExpectColumnValuesToBeBetween(column="std", min_value=rules.min_std, strict_min=True), "blank_image"),
    ]
    if has_metadata:  # every file has a metadata row (matched ignoring case): reported, not rejected
        checks.append(Check(_in_set("in_metadata", [True]), None))
    return checks


def _in_set(column: str, values: list[Any]) -> Any:
    return gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=values)


def _label_conflicts(kept: pd.DataFrame) -> list[bool]:
    """True for images whose duplicate group holds more than one label."""
    labels_per_group = kept[kept["dup_group"] != ""].groupby("dup_group")["label"].nunique()
    return [bool(g) and labels_per_group[g] > 1 for g in kept["dup_group"]]


class _Suites:
    """An ephemeral Great Expectations context whose checkpoints write Data Docs to ``docs_dir``."""

    def __init__(self, docs_dir: Path) -> None:
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        backend = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())}
        self.context.update_data_docs_site("local_site", {"class_name": "SiteBuilder", "store_backend": backend})
        self.source = self.context.data_sources.add_pandas("dataset")
        self.statistics = {"evaluated": 0, "failed": 0}

    def run(self, name: str, checks: list[Check], table: pd.DataFrame) -> dict[int, str]:
        """Run the suite ``name`` on ``table``; return {row index → first reject reason}."""
        frame = _frame_for_checks(table)
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=[c.expectation for c in checks]))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "COMPLETE"},
            )
        )
        result = next(iter(checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()))
        by_id = {saved.id: check for saved, check in zip(suite.expectations, checks, strict=True)}
        reasons: dict[int, str] = {}
        for outcome in result.results:
            if outcome.success:
                continue
            check = by_id[outcome.expectation_config.id]
            log.warning("expectation failed: %s %s", outcome.expectation_config.type, outcome.expectation_config.kwargs)
            if check.reject_as is None:
                continue
            for i in outcome.result.get("unexpected_index_list") or []:
                reason = frame.at[i, check.reject_as] if check.reject_as in frame.columns else check.reject_as
                reasons.setdefault(int(i), str(reason))
        self.statistics["evaluated"] += int(result.statistics["evaluated_expectations"])
        self.statistics["failed"] += int(result.statistics["unsuccessful_expectations"])
        return reasons


def _frame_for_checks(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the derived columns the expectations test (sides, aspect ratio, file name)."""
    width, height = table["width"].astype(float), table["height"].astype(float)
    short, long = np.fmin(width, height), np.fmax(width, height)
    return table.assign(
        file_name=[Path(p).name.lower() for p in table["path"]],
        short_side=short,
        long_side=long,
        aspect=long / short,
    )


def _rejected_table(table: pd.DataFrame, kept: pd.DataFrame, reasons: dict[int, str]) -> pd.DataFrame:
    """One row per rejected file: ``path``, ``reason``, ``label``, ``detail`` (what was measured,
    or for a label conflict the copies and their labels)."""
    rows = []
    for i in sorted(reasons, key=lambda i: table.at[i, "path"]):
        row = table.loc[i]
        if reasons[i] == "duplicate_label_conflict":
            copies = kept[(kept["dup_group"] == kept.at[i, "dup_group"]) & (kept.index != i)]
            detail = "; ".join(f"{p} ({label})" for p, label in zip(copies["path"], copies["label"], strict=True))
        elif row["error"]:
            detail = ""
        else:
            detail = f"{row['format']} {row['mode']} {row['width']}x{row['height']} px, grey std {row['std']:.2f}"
        rows.append({"path": row["path"], "reason": reasons[i], "label": row["label"], "detail": detail})
    return pd.DataFrame(rows, columns=list(REJECTED_COLUMNS))


def _track(metrics: dict[str, Any], settings: dict[str, Any], out: Path) -> None:
    """A ``validate`` MLflow run: the settings it read as params, counts as metrics, the record, the
    rejected table and Data Docs."""
    with tracking.run(tags={"stage": "validate"}, name="validate"):
        tracking.log_params(settings)
        tracking.log_metrics({k: metrics[k] for k in ("raw", "clean", "rejected", "duplicates", "expectations")})
        tracking.log_data_records({"validate": metrics})
        tracking.log_artifacts(out / paths.REJECTED_CSV, "data")
        tracking.log_artifacts(out / paths.VALIDATION_DOCS_DIR, "validation")
