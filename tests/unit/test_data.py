"""Layouts, validation, splitting and the image cache on real files (generated and ../shared)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.cache import cache_meta, load_split, make_dataset, prepare_cache
from chestxray.errors import UserError
from chestxray.images import inspect, load_gray
from chestxray.io import read_json
from chestxray.labels import apply_task
from chestxray.layouts import read_layout
from chestxray.splitting import assign_splits, data_version, split_dataset
from chestxray.validation import validate_dataset
from conftest import make_params

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def labelled(root: Path) -> pd.DataFrame:
    """The layout's table of ``root`` labelled for the 4-class task."""
    return apply_task(read_layout(root)[0], "4class", {})[0]


def test_validate_rejects_unreadable_files_with_one_reason_each(raw_dataset, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dataset, raw)
    images = raw / "COVID-19_Radiography_Dataset" / "COVID" / "images"
    (images / "COVID-1.png").write_bytes(b"")  # zero bytes
    (images / "COVID-2.png").write_text("not a png at all")  # text named .png
    data = (images / "COVID-3.png").read_bytes()
    (images / "COVID-3.png").write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "out"
    metrics = validate_dataset(raw, make_params().data, out / "manifest.csv", out / "rejected.csv", out / "validate.json")

    rejected = pd.read_csv(out / "rejected.csv")
    by_name = {Path(p).name: r for p, r in zip(rejected["path"], rejected["reason"])}
    assert by_name == {"COVID-1.png": "not_an_image", "COVID-2.png": "not_an_image", "COVID-3.png": "corrupt_image"}
    assert metrics["rejected"] == {"corrupt_image": 1, "not_an_image": 2}
    assert metrics["clean"]["COVID"] == metrics["raw"]["COVID"] - 3
    assert metrics["expectations"]["evaluated"] == 5 and metrics["expectations"]["failed"] == 1
    clean = pd.read_csv(out / "manifest.csv")
    assert len(clean) == 157 and not clean["path"].isin(rejected["path"]).any()
    assert set(clean["mode"]) == {"L"} and set(clean["width"]) == {299}
    assert read_json(out / "validate.json") == metrics


def test_split_is_stratified_seeded_and_complete(raw_dataset, tmp_path):
    table = labelled(raw_dataset)
    a = assign_splits(table, 0.15, 0.15, seed=1)
    b = assign_splits(table.sample(frac=1, random_state=3), 0.15, 0.15, seed=1)
    assert a.equals(b)  # input order does not matter
    assert not a.equals(assign_splits(table, 0.15, 0.15, seed=2))
    assert a["split"].value_counts().to_dict() == {"train": 112, "test": 24, "val": 24}
    for cls, group in a.groupby("label"):
        share = (group["split"] == "test").mean()
        assert abs(share - 0.15) < 0.1, cls
    manifest = tmp_path / "manifest.csv"
    table.to_csv(manifest, index=False)
    metrics = split_dataset(manifest, tmp_path / "split.csv", tmp_path / "split.json", 0.15, 0.15, seed=1)
    assert sum(sum(c.values()) for c in metrics["counts"].values()) == 160
    assert metrics["data_version"] == data_version(tmp_path / "split.csv") and len(metrics["data_version"]) == 12


def test_split_refuses_classes_too_small_to_split():
    table = pd.DataFrame({"path": [f"{i}.png" for i in range(12)], "label": ["a"] * 10 + ["b"] * 2})
    with pytest.raises(UserError, match=r"fewer than 3 images.*'b': 2"):
        assign_splits(table, 0.2, 0.2, seed=0)


def test_gray_conversion_of_odd_modes(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    deep = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 6)  # 12-bit range
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert inspect(tmp_path / "deep.png").mode.startswith("I")
    assert (load_gray(tmp_path / "rgba.png", 16) == 200).all()
    g = load_gray(tmp_path / "deep.png", 16)
    assert g.dtype == np.uint8 and g.min() <= 5 and g.max() >= 250  # stretched to the full range


def test_cache_holds_each_split_once_and_streams_it(raw_dataset, tmp_path):
    table = labelled(raw_dataset)
    split_csv = tmp_path / "split.csv"
    assign_splits(table, 0.15, 0.15, seed=1).to_csv(split_csv, index=False)
    meta = prepare_cache(split_csv, tmp_path / "cache", image_size=32)
    assert meta["classes"] == CLASSES and meta["counts"] == {"train": 112, "val": 24, "test": 24}
    assert cache_meta(tmp_path / "cache")["data_version"] == data_version(split_csv)
    x, y = load_split(tmp_path / "cache", "val")
    assert isinstance(x, np.memmap) and x.shape == (24, 32, 32, 1) and x.dtype == np.uint8
    order = pd.read_csv(tmp_path / "cache" / "val.csv")
    assert np.array_equal(x[0, ..., 0], load_gray(Path(order["path"][0]), 32))
    assert [CLASSES[i] for i in y] == list(order["label"])

    batches = list(make_dataset(x, y, batch_size=10, shuffle=False, seed=0).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [10, 10, 4]
    assert np.array_equal(np.concatenate([b[0] for b in batches]), x.astype(np.float32))
    shuffled = np.concatenate([b[1] for b in make_dataset(x, y, 10, True, seed=0).as_numpy_iterator()])
    assert sorted(shuffled) == sorted(y)  # every example once per epoch
