"""Train/val/test split of the clean manifest: stratified by label, grouped so that no patient and
no duplicate group straddles splits, seeded; then a leakage check. The data version is its hash."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from chestxray import paths
from chestxray.config import SplitSettings
from chestxray.data.duplicates import components, near_pairs
from chestxray.data.labels import label_counts
from chestxray.data.split_table import COLUMNS, SPLITS, data_version
from chestxray.errors import UserError
from chestxray.io import write_csv
from chestxray.records import write_record

log = logging.getLogger(__name__)

MAX_FOLDS = 20  # split fractions are met to within 1/40 (a fraction is a whole number of folds)


def split_dataset(split: SplitSettings, near_distance: int, root: Path = Path(".")) -> dict[str, Any]:
    """Split ``root``'s clean manifest; write the split table (``path, label, split, group``) and
    ``reports/split.json`` (counts, groups, leakage; headline: ``metrics/split.json``). Leakage across
    splits fails the stage."""
    manifest = pd.read_csv(root / paths.MANIFEST_CSV, dtype=str, keep_default_na=False)
    table = assign_splits(manifest, split.val, split.test, split.seed, split.use_source_split)
    leakage = leakage_pairs(table, near_distance)
    groups = table["group"].nunique()
    metrics = {
        "counts": {s: label_counts(table[table["split"] == s]) for s in SPLITS},
        "groups": int(groups),
        "grouping": grouping(table),
        "leakage": leakage,
        "removed_cross_split_duplicates": len(manifest) - len(table),
    }
    if any(leakage.values()):
        write_record("split", metrics, root / paths.SPLIT_JSON, root / paths.SPLIT_METRICS)
        raise UserError(
            f"leakage across splits: {leakage['exact_pairs']} identical and {leakage['near_pairs']} near-identical "
            f"image pairs (see {root / paths.SPLIT_JSON}); re-run validate with the same "
            "validate.near_duplicate_distance as split uses"
        )
    write_csv(root / paths.SPLIT_CSV, table[list(COLUMNS)])
    metrics["data_version"] = data_version(root / paths.SPLIT_CSV)
    write_record("split", metrics, root / paths.SPLIT_JSON, root / paths.SPLIT_METRICS)
    log.info(
        "split %d images in %d groups: %s", len(table), groups, {s: int((table["split"] == s).sum()) for s in SPLITS}
    )
    return metrics


def assign_splits(
    manifest: pd.DataFrame, val: float, test: float, seed: int, use_source_split: bool = False
) -> pd.DataFrame:
    """Return ``manifest`` sorted by path with ``group`` and ``split`` columns. Test takes ``test``
    of the images (or the source's own test images, less the train copies of them), val
    ``val / (1 - test)`` of the rest; whole groups move together, and each class keeps its share in
    every split as far as groups allow."""
    table = manifest.sort_values("path", kind="stable").reset_index(drop=True)
    counts = table["label"].value_counts()
    too_small = counts[counts < 3]
    if not too_small.empty:
        raise UserError(
            "classes with fewer than 3 images cannot be split into train/val/test: "
            f"{ {str(k): int(v) for k, v in too_small.items()} }; add images or drop the class"
        )
    table["group"] = groups(table)
    if use_source_split:
        table = _without_train_copies_of_test(table)
        is_test = table["source_split"] == "test"
    else:
        is_test = _hold_out(table, np.ones(len(table), bool), test, seed)
    is_val = _hold_out(table, ~is_test, val / (1 - test), seed)
    split = np.where(is_test, "test", np.where(is_val, "val", "train"))
    return table.assign(split=split)


def groups(table: pd.DataFrame) -> list[str]:
    """Each image's group: its patient (``patient:<id>``), else its duplicate group, else itself;
    a duplicate group that spans patients joins them into one group (named by its first key)."""
    dups = list(_column(table, "dup_group"))
    keys = [
        f"patient:{p}" if p else (d or path)
        for path, p, d in zip(table["path"], _column(table, "patient_id"), dups, strict=True)
    ]
    nodes = sorted(set(keys) | set(filter(None, dups)))
    index = {node: i for i, node in enumerate(nodes)}
    links = np.array([(index[k], index[d]) for k, d in zip(keys, dups, strict=True) if d and k != d], np.int64).reshape(
        -1, 2
    )
    component = components(len(nodes), links)
    name: dict[int, str] = {}
    for node, c in zip(nodes, component, strict=True):
        name.setdefault(int(c), node)
    return [name[int(component[index[k]])] for k in keys]


def grouping(table: pd.DataFrame) -> dict[str, Any]:
    """What the groups of a split table are, as the model card states it: ``by`` is "patient" when
    the source gives patient ids, else "duplicate group" when duplicates were joined, else "image"
    (every image its own group); with the number of images without a patient id."""
    by_patient = table["group"].str.startswith("patient:")
    without_id = int((_column(table, "patient_id") == "").sum())
    by = "patient" if by_patient.any() else "duplicate group" if table["group"].duplicated().any() else "image"
    return {"by": by, "images_without_patient_id": without_id}


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name] if name in table.columns else pd.Series("", index=table.index)


def _hold_out(table: pd.DataFrame, pool: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mark about ``fraction`` of the ``pool`` rows, whole groups at a time, stratified by label
    (``StratifiedGroupKFold``: the first k of n folds, k/n closest to ``fraction``, n at most the
    smallest class so that every fold can hold each class)."""
    rows = np.flatnonzero(pool)
    pool_table = table.loc[rows]
    smallest_class = int(pool_table["label"].value_counts().min())  # so that each fold can hold every class
    folds, k = _folds(fraction, max_folds=min(MAX_FOLDS, pool_table["group"].nunique(), max(smallest_class, 2)))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    marked = np.zeros(len(table), bool)
    with warnings.catch_warnings():  # "least populated class has only N members": small classes are expected
        warnings.simplefilter("ignore", UserWarning)
        parts = splitter.split(rows, pool_table["label"], pool_table["group"])
        for _, (_, held) in zip(range(k), parts, strict=False):  # the first k folds
            marked[rows[held]] = True
    return marked


def _folds(fraction: float, max_folds: int) -> tuple[int, int]:
    """(n, k) with k/n closest to ``fraction``, 1 ≤ k < n ≤ ``max_folds`` (fewest folds on ties)."""
    if max_folds < 2:
        raise UserError(f"cannot split {max_folds} group(s) of images; add images")
    options = [(abs(k / n - fraction), n, k) for n in range(2, max_folds + 1) for k in range(1, n)]
    _, n, k = min(options)
    return n, k


def _without_train_copies_of_test(table: pd.DataFrame) -> pd.DataFrame:
    """With the source's own split: drop the train images whose group has a test image (the test
    set stays as published). Fails if the source has no split."""
    if "source_split" not in table.columns or not table["source_split"].isin(["train", "test"]).all():
        raise UserError(
            "split.use_source_split is true but the dataset has no train/test split of its own for every image "
            "(only the covid19-image-dataset layout has one); set split.use_source_split: false"
        )
    test_groups = set(table.loc[table["source_split"] == "test", "group"])
    drop = (table["source_split"] != "test") & table["group"].isin(test_groups)
    for path in table.loc[drop, "path"]:
        log.warning("%s: a copy of it is in the source's test set; left out of train", path)
    return table[~drop].reset_index(drop=True)


def leakage_pairs(table: pd.DataFrame, near_distance: int) -> dict[str, int]:
    """Pairs of images in different splits that are byte-identical (``exact_pairs``) or whose
    perceptual hashes are within ``near_distance`` bits but whose bytes differ (``near_pairs``)."""
    per_split = table.groupby(["sha256", "split"]).size()
    per_hash = per_split.groupby(level="sha256").sum()
    # all pairs of copies, less those inside one split
    exact = (per_hash * (per_hash - 1)).sum() // 2 - (per_split * (per_split - 1)).sum() // 2
    i, j = near_pairs(list(table["phash"]), near_distance).T
    split, sha = table["split"].to_numpy(), table["sha256"].to_numpy()
    near = (split[i] != split[j]) & (sha[i] != sha[j])
    return {"exact_pairs": int(exact), "near_pairs": int(near.sum())}
