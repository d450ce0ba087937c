"""data.task: source labels of every supported dataset → the task's classes, and the report."""

from __future__ import annotations

import pandas as pd
import pytest

from chestxray.data.labels import NO_LABEL, apply_task, task_label
from chestxray.errors import UserError

RADIOGRAPHY = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
IMAGE_DATASET = ["Covid", "Normal", "Viral Pneumonia"]
IEEE8023 = [
    "COVID-19",
    "COVID-19, ARDS",
    "No Finding",
    "todo",
    "Unknown",
    "SARS",
    "Streptococcus",
    "Pneumonia/Viral/Influenza",
]
ACTUALMED = ["COVID-19", "No finding", ""]


@pytest.mark.parametrize(
    ("labels", "task", "expected"),
    [
        (RADIOGRAPHY, "4class", RADIOGRAPHY),
        (RADIOGRAPHY, "3class", ["COVID", None, "Normal", "Viral Pneumonia"]),
        (RADIOGRAPHY, "binary", ["COVID", "non-COVID", "non-COVID", "non-COVID"]),
        (IMAGE_DATASET, "4class", ["COVID", "Normal", "Viral Pneumonia"]),
        (IMAGE_DATASET, "binary", ["COVID", "non-COVID", "non-COVID"]),
        (IEEE8023, "3class", ["COVID", "COVID", "Normal", None, None, None, None, "Viral Pneumonia"]),
        (IEEE8023, "binary", ["COVID", "COVID", "non-COVID", None, None, "non-COVID", "non-COVID", "non-COVID"]),
        (ACTUALMED, "binary", ["COVID", "non-COVID", None]),
        (ACTUALMED, "4class", ["COVID", "Normal", None]),
    ],
)
def test_source_labels_map_to_the_task(labels, task, expected):
    assert [task_label(label, task, {}) for label in labels] == expected


def test_label_map_wins_matched_exactly_or_normalised():
    label_map = {"healthy": "Normal", "COVID_positive": "COVID", "Streptococcus": "Lung_Opacity", "SARS": None}
    assert task_label("Healthy", "4class", label_map) == "Normal"
    assert task_label("covid-positive", "3class", label_map) == "COVID"
    assert task_label("Streptococcus", "4class", label_map) == "Lung_Opacity"
    assert task_label("SARS", "binary", label_map) is None  # null: left out, even as "rest"
    assert task_label("SARS", "binary", {}) == "non-COVID"


def test_apply_task_keeps_mapped_rows_and_reports_the_rest():
    table = pd.DataFrame(
        {"path": [f"{i}.png" for i in range(7)], "source_label": ["Covid"] * 3 + ["Normal"] * 2 + ["todo", ""]}
    )
    kept, report = apply_task(table, "3class", {})
    assert list(kept["label"]) == ["COVID"] * 3 + ["Normal"] * 2 and list(kept["path"]) == [
        f"{i}.png" for i in range(5)
    ]
    assert report == {
        "name": "3class",
        "classes": ["COVID", "Normal"],
        "mapping": {NO_LABEL: None, "Covid": "COVID", "Normal": "Normal", "todo": None},
        "excluded": {NO_LABEL: 1, "todo": 1},
    }


def test_a_task_the_labels_cannot_serve_is_a_clear_error():
    table = pd.DataFrame({"path": ["a.png", "b.png"], "source_label": ["cats", "dogs"]})
    with pytest.raises(
        UserError, match=r"data.task 4class: the dataset's labels \['cats', 'dogs'\] give 0 of .*data.label_map"
    ):
        apply_task(table, "4class", {})
    kept, _ = apply_task(table, "binary", {"cats": "COVID", "dogs": "Normal"})
    assert list(kept["label"]) == ["COVID", "non-COVID"]
