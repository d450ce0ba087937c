"""Plots write valid PNGs atomically; the leaderboard is well-formed Markdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.reports import leaderboard_markdown, plot_confusion, plot_history, plot_roc

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def assert_png(path: Path) -> None:
    """``path`` is a readable PNG of plausible size and the only file in its folder."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert 300 < width < 3000 and 200 < height < 3000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def history(n: int = 6) -> pd.DataFrame:
    epochs = np.arange(n)
    return pd.DataFrame(
        {
            "epoch": epochs,
            "loss": 1.0 / (epochs + 1),
            "val_loss": 1.2 / (epochs + 1),
            "accuracy": 1 - 0.5 / (epochs + 1),
            "val_accuracy": 1 - 0.6 / (epochs + 1),
            "lr": 1e-3,
        }
    )


def test_plot_confusion(tmp_path: Path) -> None:
    path = tmp_path / "confusion.png"
    plot_confusion(np.array([[30, 2, 1], [3, 40, 5], [0, 4, 25]]), CLASSES, path)
    assert_png(path)


def test_plot_confusion_handles_empty_row(tmp_path: Path) -> None:
    path = tmp_path / "confusion.png"
    plot_confusion(np.array([[3, 1], [0, 0]]), ["a", "b"], path)
    assert_png(path)


def test_plot_roc(tmp_path: Path) -> None:
    curve = pd.DataFrame({"fpr": [0, 0.1, 1], "tpr": [0, 0.8, 1], "threshold": [1.0, 0.5, 0.0]})
    path = tmp_path / "roc.png"
    plot_roc({"COVID": curve, "Normal": curve}, {"COVID": 0.9512, "Normal": None}, path)
    assert_png(path)


@pytest.mark.parametrize("fine_tune_start", [None, 3])
def test_plot_history(tmp_path: Path, fine_tune_start: int | None) -> None:
    path = tmp_path / "history.png"
    plot_history(history(), path, fine_tune_start)
    assert_png(path)


def test_plot_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "history.png"
    path.write_bytes(b"old")
    plot_history(history(), path, None)
    assert_png(path)


def row(run_id: str, name: str, macro_f1: float | None) -> dict:
    return {
        "run_id": run_id,
        "run_name": name,
        "model": "resnet50",
        "macro_f1": macro_f1,
        "accuracy": 0.91234,
        "roc_auc_macro": float("nan"),
        "covid_sensitivity": 0.8,
        "covid_specificity": None,
        "weights": "imagenet",
        "image_size": 224,
        "epochs": 5,
        "train_seconds": 12.3456,
        "params": 23587712,
        "start_time": "2024-05-01T10:00:00",
    }


def test_leaderboard_markdown() -> None:
    rows = [row("r2", "second-run", 0.5), row("r1", "first-run", None), row("r3", "third-run", 0.25)]
    text = leaderboard_markdown(rows, best_run_id="r1")
    assert text.startswith("# Leaderboard\n")
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]  # skip header
    assert len(lines) == 3
    assert [next(n for n in ("second", "first", "third") if n in line) for line in lines] == ["second", "first", "third"]
    assert "| 0.500 |" in lines[0] and "| 0.912 |" in lines[0] and "| 12.346 |" in lines[0]
    assert "| – | 0.912 | – |" in lines[1]  # None macro F1, NaN ROC-AUC
    assert "| – | imagenet |" in lines[1]  # None COVID specificity
    assert "★" in lines[1] and "★" not in lines[0] + lines[2]
    assert "23,587,712" in lines[0] and "| 224 |" in lines[0]


def test_leaderboard_without_best_or_rows() -> None:
    assert "★" not in leaderboard_markdown([row("r1", "a", 0.5)], best_run_id=None)
    assert leaderboard_markdown([], best_run_id=None).startswith("# Leaderboard")
