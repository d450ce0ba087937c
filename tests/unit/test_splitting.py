"""The split: stratified, grouped (patients, duplicate groups), deterministic to the byte, the
source's own split on request, and a leakage check that fails the stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chestxray.data.split_table import data_version
from chestxray.data.splitting import _folds, assign_splits, grouping, groups, leakage_pairs, split_dataset
from chestxray.errors import UserError
from chestxray.io import read_json
from chestxray.paths import MANIFEST_CSV, SPLIT_CSV, SPLIT_JSON
from conftest import make_params

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def manifest(n: int = 400, patients: int = 0) -> pd.DataFrame:
    """A manifest of ``n`` images in 4 classes (40/30/20/10 %); with ``patients``, images share patient ids."""
    labels = [CLASSES[0]] * (n * 4 // 10) + [CLASSES[1]] * (n * 3 // 10) + [CLASSES[2]] * (n * 2 // 10)
    labels += [CLASSES[3]] * (n - len(labels))
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "path": [f"img/{i:05d}.png" for i in range(n)],
            "label": labels,
            "patient_id": [f"P{i % patients}" if patients else "" for i in range(n)],
            "dup_group": "",
            "source_split": "",
            "sha256": [f"{i:064x}" for i in range(n)],
            "phash": [f"{int.from_bytes(rng.bytes(32)):064x}" for _ in range(n)],  # random: ~128 bits apart
        }
    )


def write_manifest(root: Path, table: pd.DataFrame) -> None:
    (root / MANIFEST_CSV).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / MANIFEST_CSV, index=False)


def test_stratified_fractions_and_order_independence():
    table = manifest()
    a = assign_splits(table, 0.15, 0.15, seed=1)
    assert a.equals(assign_splits(table.sample(frac=1, random_state=3), 0.15, 0.15, seed=1))
    assert not a.equals(assign_splits(table, 0.15, 0.15, seed=2))
    assert a["split"].value_counts().to_dict() == {"train": 280, "test": 60, "val": 60}
    shares = pd.crosstab(a["label"], a["split"], normalize="index")
    assert ((shares["test"] - 0.15).abs() <= 0.02).all() and ((shares["val"] - 0.15).abs() <= 0.02).all()
    assert list(a["group"]) == list(a["path"])  # no patients, no duplicates: each image is its own group


def test_patients_and_duplicate_groups_never_straddle_splits():
    table = manifest(patients=90)
    table.loc[[5, 6, 7], "dup_group"] = "dup-00000"  # three patients joined by one duplicate group
    table.loc[[5, 6, 7], "patient_id"] = ["", "P6", "P7"]
    a = assign_splits(table, 0.15, 0.15, seed=0)
    assert a.groupby("group")["split"].nunique().max() == 1
    assert a.groupby("patient_id")["split"].nunique().drop("").max() == 1
    joined = a[a["patient_id"].isin(["P6", "P7"]) | (a["dup_group"] != "")]
    assert joined["group"].nunique() == 1 and joined["split"].nunique() == 1
    assert a["group"].nunique() == 89  # 90 patients, two of them joined
    counts = a["split"].value_counts(normalize=True)
    assert abs(counts["test"] - 0.15) < 0.05 and abs(counts["val"] - 0.15) < 0.05


def test_groups_prefer_patient_then_duplicate_group_then_image():
    table = pd.DataFrame(
        {"path": ["a", "b", "c", "d"], "patient_id": ["P1", "", "", ""], "dup_group": ["", "dup-1", "dup-1", ""]}
    )
    assert groups(table) == ["patient:P1", "dup-1", "dup-1", "d"]


def test_split_table_is_byte_identical_and_metrics_have_the_interface(tmp_path):
    write_manifest(tmp_path, manifest(patients=150))
    split = make_params().split
    first = split_dataset(split, 12, root=tmp_path)
    table_bytes = (tmp_path / SPLIT_CSV).read_bytes()
    (tmp_path / SPLIT_CSV).unlink()
    assert split_dataset(split, 12, root=tmp_path) == first
    assert (tmp_path / SPLIT_CSV).read_bytes() == table_bytes
    assert list(pd.read_csv(tmp_path / SPLIT_CSV).columns) == ["path", "label", "split", "group", "sha256"]
    assert read_json(tmp_path / SPLIT_JSON) == first
    assert set(first["counts"]) == {"train", "val", "test"} and set(first["counts"]["test"]) == set(CLASSES)
    assert first["groups"] == 150 and first["leakage"] == {"exact_pairs": 0, "near_pairs": 0}
    assert first["grouping"] == {"by": "patient", "images_without_patient_id": 0}
    assert first["data_version"] == data_version(tmp_path / SPLIT_CSV)


def test_the_data_version_changes_with_an_image_under_the_same_path(tmp_path):
    """The reported case: regenerated images with the same paths kept data version 0f88c1c7f550."""
    table = manifest(patients=150)
    write_manifest(tmp_path, table)
    before = split_dataset(make_params().split, 12, root=tmp_path)["data_version"]
    write_manifest(tmp_path, table.assign(sha256=table["sha256"].where(table.index != 0, "f" * 64)))
    assert split_dataset(make_params().split, 12, root=tmp_path)["data_version"] != before


@pytest.mark.parametrize(
    ("patient_id", "dup_group", "by", "without"),
    [
        (["P1", "P1", "P2"], ["", "", ""], "patient", 0),
        (["P1", "", ""], ["", "", ""], "patient", 2),
        (["", "", ""], ["d", "d", ""], "duplicate group", 3),
        (["", "", ""], ["", "", ""], "image", 3),
    ],
)
def test_the_grouping_says_what_the_groups_are(patient_id, dup_group, by, without):
    table = pd.DataFrame({"path": ["a", "b", "c"], "patient_id": patient_id, "dup_group": dup_group})
    assert grouping(table.assign(group=groups(table))) == {"by": by, "images_without_patient_id": without}


def test_leakage_is_counted_and_fails_the_stage(tmp_path):
    table = assign_splits(manifest(), 0.15, 0.15, seed=0)
    test_row, train_row = table.index[table["split"] == "test"][0], table.index[table["split"] == "train"][:2]
    table.loc[train_row[0], "sha256"] = table.loc[test_row, "sha256"]  # the same bytes
    table.loc[train_row[1], "phash"] = table.loc[test_row, "phash"][:-1] + "0"  # a near copy
    assert leakage_pairs(table, 12) == {"exact_pairs": 1, "near_pairs": 1}

    write_manifest(tmp_path, manifest().assign(sha256="0" * 64))  # every image the same bytes, no group
    with pytest.raises(UserError, match=r"leakage across splits: \d+ identical and 0 near-identical image pairs"):
        split_dataset(make_params(**{"split.seed": 0}).split, 12, root=tmp_path)
    assert not (tmp_path / SPLIT_CSV).exists()


def test_too_small_classes_and_sources_without_a_split_are_refused(tmp_path):
    table = pd.DataFrame({"path": [f"{i}.png" for i in range(12)], "label": ["a"] * 10 + ["b"] * 2})
    with pytest.raises(UserError, match=r"fewer than 3 images.*'b': 2"):
        assign_splits(table, 0.2, 0.2, seed=0)
    write_manifest(tmp_path, manifest())
    with pytest.raises(UserError, match=r"split\.use_source_split is true but the dataset has no train/test split"):
        split_dataset(make_params(**{"split.use_source_split": True, "split.seed": 0}).split, 12, root=tmp_path)


@pytest.mark.parametrize(("fraction", "expected"), [(0.15, (20, 3)), (0.2, (5, 1)), (0.3, (10, 3)), (0.5, (2, 1))])
def test_fractions_become_whole_folds(fraction, expected):
    assert _folds(fraction, max_folds=20) == expected
