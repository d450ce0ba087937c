"""Image decoding and the image cache on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from chestxray.data.cache import cache_meta, load_split, prepare_cache
from chestxray.data.images import inspect, load_gray
from chestxray.data.labels import apply_task
from chestxray.data.layouts import read_layout
from chestxray.data.split_table import data_version
from chestxray.data.splitting import assign_splits
from chestxray.learn.inputs import make_dataset

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def labelled(root: Path) -> pd.DataFrame:
    """The layout's table of ``root`` labelled for the 4-class task."""
    return apply_task(read_layout(root)[0], "4class", {})[0]


def test_gray_conversion_of_odd_modes(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    deep = np.arange(600, dtype=np.uint16).reshape(20, 30) * 6  # 12-bit range
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
    assert meta["classes"] == CLASSES and meta["counts"] == {"train": 114, "val": 23, "test": 23}
    assert cache_meta(tmp_path / "cache")["data_version"] == data_version(split_csv)
    x, y = load_split(tmp_path / "cache", "val")
    assert isinstance(x, np.memmap) and x.shape == (23, 32, 32, 1) and x.dtype == np.uint8
    order = pd.read_csv(tmp_path / "cache" / "val.csv")
    assert np.array_equal(x[0, ..., 0], load_gray(Path(order["path"][0]), 32))
    assert [CLASSES[i] for i in y] == list(order["label"])

    batches = list(make_dataset(x, y, batch_size=10, shuffle=False, seed=0).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [10, 10, 3]
    assert np.array_equal(np.concatenate([b[0] for b in batches]), x.astype(np.float32))
    shuffled = np.concatenate([b[1] for b in make_dataset(x, y, 10, True, seed=0).as_numpy_iterator()])
    assert sorted(shuffled) == sorted(y)  # every example once per epoch
