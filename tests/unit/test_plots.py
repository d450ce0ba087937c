"""Plots write valid PNGs atomically (matplotlib figures without pyplot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.judge import plots
from chestxray.learn.training import plot_history

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
    plots.confusion(np.array([[30, 2, 1], [3, 40, 5], [0, 4, 25]]), CLASSES, path)
    assert_png(path)


def test_plot_confusion_handles_empty_row(tmp_path: Path) -> None:
    path = tmp_path / "confusion.png"
    plots.confusion(np.array([[3, 1], [0, 0]]), ["a", "b"], path)
    assert_png(path)


def test_plot_roc(tmp_path: Path) -> None:
    curve = pd.DataFrame({"fpr": [0, 0.1, 1], "tpr": [0, 0.8, 1], "threshold": [1.0, 0.5, 0.0]})
    path = tmp_path / "roc.png"
    plots.roc({"COVID": curve, "Normal": curve}, {"COVID": 0.9512, "Normal": None}, path)
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


def test_precision_recall_and_reliability(tmp_path: Path) -> None:
    curve = pd.DataFrame({"recall": [0, 0.5, 1], "precision": [1, 0.9, 0.6], "threshold": [0.9, 0.5, 0.1]})
    plots.precision_recall({"COVID": curve}, {"COVID": 0.85}, tmp_path / "pr" / "pr.png")
    assert_png(tmp_path / "pr" / "pr.png")
    table = pd.DataFrame(
        {"low": [0, 0.5], "high": [0.5, 1], "count": [0, 4], "confidence": [np.nan, 0.8], "accuracy": [np.nan, 0.75]}
    )
    plots.reliability(table, 0.05, tmp_path / "reliability" / "r.png")
    assert_png(tmp_path / "reliability" / "r.png")


def test_no_pyplot_state_is_left_behind(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_history(history(), tmp_path / "history.png", None)
    assert plt.get_fignums() == before


def test_the_dvc_plots_page_is_built_once_per_bundle(tmp_path):
    from chestxray.judge import plots_page

    page = tmp_path / "plots_template.html"
    plots_page.write_page(page)
    text = page.read_text(encoding="utf-8")
    assert "{plot_divs}" in text and "{scripts}" not in text and "vegaEmbed" in text  # no CDN scripts
    page.write_text(text.replace("<title>", "<!-- kept -->\n<title>"), encoding="utf-8")
    plots_page.write_page(page)  # same bundle: left as it is
    assert "<!-- kept -->" in page.read_text(encoding="utf-8")
    page.write_text(text.replace(plots_page.generator(), "<!-- an older bundle -->"), encoding="utf-8")
    plots_page.write_page(page)  # another bundle: built again
    assert page.read_text(encoding="utf-8") == text
