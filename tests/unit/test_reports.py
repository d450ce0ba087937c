"""Plots write valid PNGs atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.reports import plot_confusion, plot_history, plot_roc

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
