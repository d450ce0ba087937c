"""Metrics per image source: values worked out by hand from the small confusion tables below."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from chestxray.judge.per_source import per_source, per_source_table

CLASSES = ("COVID", "Normal", "Viral Pneumonia")

# (source, true class, predicted class), interleaved so that each source's images are scattered
IMAGES = [
    ("github.com/x", 0, 0),
    ("kaggle.com/p", 2, 2),
    ("", 0, 0),
    ("eurorad.org", 1, 1),
    ("github.com/x", 0, 0),
    ("tiny.org", 0, 1),
    ("kaggle.com/p", 2, 2),
    ("github.com/x", 0, 2),
    ("eurorad.org", 0, 1),
    ("", 1, 1),
    ("github.com/x", 1, 1),
    ("kaggle.com/p", 2, 2),
    ("eurorad.org", 1, 1),
    ("tiny.org", 1, 1),
    ("github.com/x", 1, 0),
    ("kaggle.com/p", 2, 0),
    ("eurorad.org", 0, 0),
    ("", 2, 2),
]


def _arrays() -> tuple[np.ndarray, np.ndarray, list[str]]:
    sources, y, pred = zip(*IMAGES, strict=True)
    return np.array(y), np.array(pred), list(sources)


def test_per_source_scores_each_source_with_enough_images():
    y, pred, sources = _arrays()
    result = per_source(y, pred, sources, CLASSES, min_images=3)
    # n descending, then name; tiny.org (2 images) and the empty source are left out
    assert list(result) == ["github.com/x", "eurorad.org", "kaggle.com/p"]
    # github.com/x: true 0 0 0 1 1, predicted 0 0 2 1 0. F1(COVID) = 2*2 / (3 actual + 3 predicted) = 2/3,
    # F1(Normal) = 2*1 / (2 + 1) = 2/3; Viral Pneumonia is predicted once but never true: not averaged.
    assert result["github.com/x"] == {
        "n": 5,
        "accuracy": 0.6,
        "macro_f1": 0.666667,
        "classes": {"COVID": 3, "Normal": 2},
    }
    # eurorad.org: true 1 0 1 0, predicted 1 1 1 0. F1(COVID) = 2*1 / (2 + 1) = 2/3, F1(Normal) = 2*2 / (2 + 3) = 0.8
    assert result["eurorad.org"] == {
        "n": 4,
        "accuracy": 0.75,
        "macro_f1": 0.733333,
        "classes": {"COVID": 2, "Normal": 2},
    }
    # kaggle.com/p holds one class only: no macro-F1
    assert result["kaggle.com/p"] == {"n": 4, "accuracy": 0.75, "macro_f1": None, "classes": {"Viral Pneumonia": 4}}


def test_macro_f1_is_sklearns_over_the_classes_present():
    y, pred, sources = _arrays()
    mask = np.array(sources) == "github.com/x"
    expected = f1_score(y[mask], pred[mask], labels=[0, 1], average="macro")
    assert per_source(y, pred, sources, CLASSES, 1)["github.com/x"]["macro_f1"] == pytest.approx(expected, abs=1e-6)


def test_min_images_keeps_sources_at_the_threshold():
    y, pred, sources = _arrays()
    assert list(per_source(y, pred, sources, CLASSES, min_images=2)) == [
        "github.com/x",
        "eurorad.org",
        "kaggle.com/p",
        "tiny.org",
    ]
    assert list(per_source(y, pred, sources, CLASSES, min_images=5)) == ["github.com/x"]
    assert per_source(y, pred, sources, CLASSES, min_images=6) == {}


def test_per_source_table_has_a_row_per_source_and_a_column_per_class():
    y, pred, sources = _arrays()
    table = per_source_table(per_source(y, pred, sources, CLASSES, 3), CLASSES)
    assert list(table.columns) == ["source", "n", "accuracy", "macro_f1", *CLASSES]
    assert table.drop(columns="macro_f1").values.tolist() == [
        ["github.com/x", 5, 0.6, 3, 2, 0],
        ["eurorad.org", 4, 0.75, 2, 2, 0],
        ["kaggle.com/p", 4, 0.75, 0, 0, 4],
    ]
    assert table["macro_f1"].tolist()[:2] == [0.666667, 0.733333] and np.isnan(
        table.at[2, "macro_f1"]
    )  # empty in a CSV
