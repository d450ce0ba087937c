"""Stratified, seeded train/val/test split of the clean manifest; the data version is its hash."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from chestxray.errors import UserError
from chestxray.io import atomic_path, write_json
from chestxray.layouts import label_counts

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def assign_splits(manifest: pd.DataFrame, val: float, test: float, seed: int) -> pd.DataFrame:
    """Return ``manifest`` sorted by path with a ``split`` column, stratified by ``label``."""
    table = manifest.sort_values("path").reset_index(drop=True)
    counts = table["label"].value_counts()
    too_small = counts[counts < 3]
    if not too_small.empty:
        raise UserError(
            "classes with fewer than 3 images cannot be split into train/val/test: "
            f"{ {str(k): int(v) for k, v in too_small.items()} }; add images or drop the class"
        )
    rest, test_part = train_test_split(table.index, test_size=test, stratify=table["label"], random_state=seed)
    train_part, val_part = train_test_split(
        rest, test_size=val / (1 - test), stratify=table.loc[rest, "label"], random_state=seed
    )
    split = pd.Series("train", index=table.index)
    split[val_part], split[test_part] = "val", "test"
    return table.assign(split=split)


def split_dataset(manifest_csv: Path, split_csv: Path, metrics_json: Path, val: float, test: float, seed: int) -> dict[str, Any]:
    """Split the clean manifest; write the split table and ``counts.<split>.<Class>``."""
    table = assign_splits(pd.read_csv(manifest_csv, keep_default_na=False), val, test, seed)
    with atomic_path(split_csv) as tmp:
        table.to_csv(tmp, index=False)
    counts = {s: label_counts(table[table["split"] == s]) for s in SPLITS}
    metrics = {"counts": counts, "data_version": data_version(split_csv)}
    write_json(metrics_json, metrics)
    log.info("split %d images: %s", len(table), {s: sum(c.values()) for s, c in counts.items()})
    return metrics


def data_version(split_csv: Path) -> str:
    """The data version: the first 12 hex digits of the split table's sha256."""
    return hashlib.sha256(Path(split_csv).read_bytes()).hexdigest()[:12]
