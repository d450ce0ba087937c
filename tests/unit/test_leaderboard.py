"""The leaderboard as Markdown and as a chart, and its columns: the registry's leaderboard metrics."""

from __future__ import annotations

import pytest

from chestxray.judge import leaderboard, metrics
from conftest import png_size


def test_the_metric_columns_are_the_registrys_leaderboard_metrics_in_order() -> None:
    titles = dict(leaderboard.COLUMNS)
    board = [m for m in metrics.METRICS if m.leaderboard]
    assert [key for key, _ in leaderboard.COLUMNS if key in {m.name for m in metrics.METRICS}] == [
        m.name for m in board
    ]
    assert titles["macro_f1"] == "Macro F1 [95 % CI]" and titles["ece"] == "ECE"
    assert all(titles[m.name].endswith("[95 % CI]") == m.ci for m in board)


def row(run_id: str, name: str, macro_f1: float | None, low: float | None = None, high: float | None = None) -> dict:
    return {
        "run_id": run_id,
        "run_name": name,
        "model": "resnet50",
        "weights": "imagenet",
        "image_size": 224,
        "imbalance": "focal",
        "epochs": 5,
        "macro_f1": macro_f1,
        "macro_f1_low": low,
        "macro_f1_high": high,
        "accuracy": 0.91234,
        "roc_auc_macro": float("nan"),
        "covid_sensitivity": 0.8,
        "covid_specificity": None,
        "train_seconds": 12.3456,
        "params": 23587712,
        "model_mb": 94.7,
        "start_time": "2024-05-01T10:00:00",
    }


def test_leaderboard_markdown() -> None:
    rows = [
        row("r2", "second-run", 0.5, 0.41, 0.6),
        row("r1", "first-run", None, 0.1, 0.2),
        row("r3", "third-run", 0.25),
    ]
    text = leaderboard.markdown(rows, "r1", "Intro.", ["A note."])
    assert text.startswith("# Leaderboard\n\nIntro.\n") and text.endswith("\n\nA note.\n")
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]  # skip header
    assert len(lines) == 3
    assert [next(n for n in ("second", "first", "third") if n in line) for line in lines] == [
        "second",
        "first",
        "third",
    ]
    assert "| 0.500 [0.410, 0.600] | 0.912 |" in lines[0] and "| 12.346 |" in lines[0] and "| 94.700 |" in lines[0]
    assert (
        "| – | 0.912 | – | – | – |" in lines[1]
    )  # None macro F1 (its CI not shown), no balanced acc. / weighted F1, NaN ROC-AUC
    assert "| 0.800 | – | – |" in lines[1]  # None COVID specificity, no ECE
    assert "| 0.250 | 0.912 |" in lines[2]  # no CI
    assert lines[1].startswith("| ★ | 2 |") and "★" not in lines[0] + lines[2]
    assert "23,587,712" in lines[0] and "| 224 |" in lines[0]


def test_leaderboard_without_champion_or_rows() -> None:
    assert "★" not in leaderboard.markdown([row("r1", "a", 0.5)], None)
    assert leaderboard.markdown([], None) == "# Leaderboard\n\n_No runs yet._\n"


@pytest.mark.parametrize("n", [1, 20])
def test_plot_leaderboard_is_readable_with_few_or_many_runs(tmp_path, n) -> None:
    rows = [row(f"r{i}", f"run-{i}", 0.9 - 0.02 * i, 0.85 - 0.02 * i, 0.93 - 0.02 * i) for i in range(n)]
    path = tmp_path / "leaderboard.png"
    leaderboard.plot(rows, metrics.get("macro_f1"), "r0", path)
    width, height = png_size(path)
    assert 400 < width < 2000 and 150 < height < 2500
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.png"]  # written atomically
