"""The leaderboard as Markdown and as a chart, its columns, and the seed groups."""

from __future__ import annotations

import statistics

import pytest

from chestxray.judge import leaderboard, metrics
from conftest import png_size

MACRO_F1 = metrics.get("macro_f1")


def test_the_columns_rank_on_validation_and_label_every_test_column() -> None:
    titles = dict(leaderboard.columns(MACRO_F1))
    board = [m for m in metrics.METRICS if m.leaderboard]
    assert [key for key in titles if key.startswith("test.") and "operating_point" not in key] == [
        f"test.{m.name}" for m in board
    ]
    assert (
        titles["val.macro_f1"] == "Validation Macro F1 [95 % CI]"
        and titles["test.macro_f1"] == "Macro F1 (test) [95 % CI]"
    )
    assert titles["test.covid_sensitivity"].startswith("COVID sens. argmax (test)")
    assert titles["test.operating_point.sensitivity"] == "COVID sens. @ threshold (test) [95 % CI]"
    assert titles["test.operating_point.specificity"] == "COVID spec. @ threshold (test) [95 % CI]"
    assert all(titles[f"test.{m.name}"].endswith("[95 % CI]") == m.ci for m in board)
    assert [key for key in titles if key.startswith("val.")] == ["val.macro_f1"]  # only the ranking metric
    ece = dict(leaderboard.columns(metrics.get("ece")))
    assert [key for key in ece if key.startswith("val.")] == ["val.ece"]


def row(
    run_id: str,
    name: str,
    val: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    test: float | None = 0.7,
    setting: str = "s1",
    seed: int = 1,
) -> dict:
    return {
        "run_id": run_id,
        "run_name": name,
        "model": "resnet50",
        "weights": "imagenet",
        "image_size": 224,
        "imbalance": "focal",
        "epochs": 5,
        "seed": seed,
        "setting": setting,
        "val.macro_f1": val,
        "val.macro_f1.low": low,
        "val.macro_f1.high": high,
        "test.macro_f1": test,
        "test.macro_f1.low": None if test is None else test - 0.1,
        "test.macro_f1.high": None if test is None else test + 0.1,
        "test.accuracy": 0.91234,
        "test.roc_auc_macro": float("nan"),
        "test.covid_sensitivity": 0.8,
        "test.covid_specificity": None,
        "test.operating_point.threshold": 0.25,
        "test.operating_point.sensitivity": 0.95,
        "test.operating_point.sensitivity.low": 0.9,
        "test.operating_point.sensitivity.high": 0.99,
        "test.operating_point.specificity": 0.6,
        "train_seconds": 12.3456,
        "params": 23587712,
        "model_mb": 94.7,
        "start_time": "2024-05-01T10:00:00",
    }


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_leaderboard_markdown() -> None:
    rows = [
        row("r2", "second-run", 0.5, 0.41, 0.6),
        row("r1", "first-run", None, 0.1, 0.2, test=None),
        row("r3", "third-run", 0.25),
    ]
    text = leaderboard.markdown(rows, MACRO_F1, "r1", "Intro.", ["A note."])
    assert text.startswith("# Leaderboard\n\nIntro.\n") and text.endswith("\n\nA note.\n")
    header, *lines = [cells(line) for line in text.splitlines() if line.startswith("| ")]
    assert header[:3] == ["Champion", "Rank (validation macro_f1)", "Run"]
    assert [line[2] for line in lines] == ["second-run", "first-run", "third-run"]
    assert header[3:] == [title for _, title in leaderboard.columns(MACRO_F1)][1:]
    keys = ["mark", "rank", *(key for key, _ in leaderboard.columns(MACRO_F1))]
    table = [dict(zip(keys, line, strict=True)) for line in lines]
    assert table[0]["val.macro_f1"] == "0.500 [0.410, 0.600]"
    assert table[0]["test.macro_f1"] == "0.700 [0.600, 0.800]"
    assert table[0]["test.accuracy"] == "0.912"  # no CI in the row
    assert table[0]["test.operating_point.sensitivity"] == "0.950 [0.900, 0.990]"
    assert table[0]["test.operating_point.specificity"] == "0.600"
    assert (table[0]["test.operating_point.threshold"], table[0]["seed"], table[0]["params"]) == (
        "0.250",
        "1",
        "23,587,712",
    )
    assert (table[0]["train_seconds"], table[0]["model_mb"], table[0]["image_size"]) == ("12.346", "94.700", "224")
    assert table[1]["val.macro_f1"] == "–"  # None value: its CI is not shown
    assert table[1]["test.macro_f1"] == "–"
    assert table[1]["test.roc_auc_macro"] == "–"  # NaN
    assert table[1]["test.covid_specificity"] == "–" and table[1]["test.ece"] == "–"  # None, absent
    assert table[2]["val.macro_f1"] == "0.250"
    assert [line[:2] for line in lines] == [["", "1"], ["★", "2"], ["", "3"]]


def test_leaderboard_without_champion_or_rows() -> None:
    assert "★" not in leaderboard.markdown([row("r1", "a", 0.5)], MACRO_F1, None)
    assert leaderboard.markdown([], MACRO_F1, None) == "# Leaderboard\n\n_No runs yet._\n"


def test_improvement_follows_the_metrics_direction() -> None:
    assert leaderboard.improvement(MACRO_F1, 0.83, 0.80) == pytest.approx(0.03)
    assert leaderboard.improvement(metrics.get("ece"), 0.02, 0.05) == pytest.approx(0.03)
    assert leaderboard.improvement(metrics.get("ece"), 0.05, 0.02) == pytest.approx(-0.03)


def test_the_setting_ignores_only_seeds_and_resolved_values() -> None:
    def run(**params: str) -> dict:
        base = {"model": "cnn", "train.epochs": "3", "train.seed": "1", "seed": "42", "resolved.replicas": "1"}
        return {
            "params": base | params,
            "tags": {"data_version": "v1", "evaluate.bootstrap": "1000", "mlflow.user": "a"},
        }

    same = leaderboard.setting(run())
    assert len(same) == 12
    assert leaderboard.setting(run(**{"train.seed": "2", "seed": "7", "resolved.replicas": "2"})) == same
    assert leaderboard.setting(run(**{"train.epochs": "4"})) != same
    other_eval = run()
    other_eval["tags"] |= {"evaluate.bootstrap": "2000"}
    assert leaderboard.setting(other_eval) != same
    other_user = run()
    other_user["tags"] |= {"mlflow.user": "b"}  # not a setting
    assert leaderboard.setting(other_user) == same


def test_seed_groups_mean_and_sample_sd() -> None:
    rows = [  # in rank order
        row("a", "a", 0.90, setting="long", test=0.80),
        row("b", "b", 0.84, seed=2, test=0.74),
        row("c", "c", 0.83, seed=3, test=0.78),
        row("d", "d", 0.80, seed=1, test=0.70),
        row("e", "e", 0.60, setting="other", test=None),
    ]
    groups = leaderboard.seed_groups(rows, MACRO_F1)
    assert [g["runs"] for g in groups] == [["a"], ["b", "c", "d"], ["e"]]
    seeded = groups[1]
    assert (seeded["n"], seeded["model"], seeded["seeds"]) == (3, "resnet50", [2, 3, 1])
    assert seeded["validation"]["mean"] == pytest.approx(statistics.mean([0.84, 0.83, 0.80]), abs=1e-6)
    assert seeded["validation"]["sd"] == pytest.approx(statistics.stdev([0.84, 0.83, 0.80]), abs=1e-6)
    assert seeded["test"] == {"mean": pytest.approx(0.74), "sd": pytest.approx(0.04)}
    assert groups[0]["validation"] == {"mean": 0.9, "sd": None}  # n = 1: no sd
    assert groups[2]["test"] == {"mean": None, "sd": None}
    # a lower-is-better metric orders the groups lowest mean first
    ece = [{**r, "val.ece": r["val.macro_f1"], "test.ece": r["test.macro_f1"]} for r in rows]
    assert [g["runs"][0] for g in leaderboard.seed_groups(ece, metrics.get("ece"))] == ["e", "b", "a"]

    text = leaderboard.groups_markdown(groups, MACRO_F1, {"b": "run-b"})
    assert text.startswith("## Runs that differ only in train.seed\n")
    lines = [cells(line) for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == ["Model", "n", "Validation macro_f1", "Test macro_f1", "Train seeds", "Runs"]
    assert lines[2] == ["resnet50", "3", "0.823 ± 0.021", "0.740 ± 0.040", "2, 3, 1", "run-b, c, d"]
    assert lines[1][:4] == ["resnet50", "1", "0.900", "0.800"] and lines[3][3] == "–"


@pytest.mark.parametrize("n", [1, 20])
def test_plot_leaderboard_is_readable_with_few_or_many_runs(tmp_path, n) -> None:
    rows = [row(f"r{i}", f"run-{i}", 0.9 - 0.02 * i, 0.85 - 0.02 * i, 0.93 - 0.02 * i) for i in range(n)]
    path = tmp_path / "leaderboard.png"
    leaderboard.plot(rows, MACRO_F1, "r0", path)
    width, height = png_size(path)
    assert 400 < width < 2000 and 150 < height < 2500
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.png"]  # written atomically


def test_the_store_is_named_relative_to_the_repository_so_the_page_is_the_same_in_every_clone(tmp_path) -> None:
    for root in (tmp_path / "clone-a", tmp_path / "clone-b"):
        assert leaderboard.store(f"sqlite:///{root / 'mlflow.db'}", root) == "sqlite:///mlflow.db"
    root = tmp_path / "repo"
    assert leaderboard.store(f"sqlite:///{root / 'stores/runs.db'}", root) == "sqlite:///stores/runs.db"
    outside = f"sqlite:///{tmp_path / 'elsewhere/mlflow.db'}"  # a store set with MLFLOW_TRACKING_URI
    assert leaderboard.store(outside, root) == outside
    assert leaderboard.store("http://127.0.0.1:5000", root) == "http://127.0.0.1:5000"
