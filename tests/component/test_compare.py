"""The compare stage on a real SQLite MLflow store, real registry and real artifacts: ranking,
McNemar's test, the champion alias, compare.json, the Markdown leaderboard and its chart."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from chestxray import paths, tracking
from chestxray.config import CompareSettings
from chestxray.io import read_json, write_json
from chestxray.judge import leaderboard, metrics
from chestxray.judge.compare import compare_runs, mcnemar
from conftest import png_size

NAME = "chestxray"
CLASSES = ("COVID", "Normal")


class FixedProbabilities(mlflow.pyfunc.PythonModel):
    """A trivial servable model: the same COVID probability for every input."""

    def predict(self, context, model_input: list[str], params=None) -> list[float]:
        return [0.5] * len(model_input)


def predictions(correct: list[bool], actual_flip: int | None = None) -> pd.DataFrame:
    """Test predictions on images p00, p01, …: each right or wrong as ``correct`` says."""
    actual = [CLASSES[i % 2] for i in range(len(correct))]
    if actual_flip is not None:
        actual[actual_flip] = CLASSES[1 - actual_flip % 2]
    predicted = [a if ok else CLASSES[1 - CLASSES.index(a)] for a, ok in zip(actual, correct, strict=True)]
    paths = [f"p{i:02d}.png" for i in range(len(correct))]
    return pd.DataFrame({"path": paths, "actual": actual, "predicted": predicted, "p_COVID": 0.5, "p_Normal": 0.5})


def log_run(
    model: str,
    version: str,
    f1: float | None,
    accuracy: float = 0.5,
    *,
    servable: bool = False,
    preds: pd.DataFrame | None = None,
    tmp_path: Path | None = None,
) -> str:
    """A trained run; evaluated (test.*) when ``f1`` is given; with a pyfunc ``model`` and an
    ``evaluate/predictions.csv`` when asked."""
    with tracking.run(tracking.run_tags(model, version, image_size=64)) as run_id:
        tracking.log_params({"model": model, "train": {"weights": "none", "imbalance": "class_weight"}})
        tracking.log_metrics({"epochs_run": 3, "params": 1234, "train_seconds": 12.5, "model_mb": 4.2}, prefix="train.")
        if f1 is not None:
            tracking.log_metrics(
                {
                    "macro_f1": f1,
                    "accuracy": accuracy,
                    "roc_auc_macro": 0.95,
                    "ece": 0.04,
                    "covid_sensitivity": 0.9,
                    "covid_specificity": 0.8,
                    "ci": {"macro_f1": {"low": f1 - 0.055, "high": f1 + 0.047}},
                },
                prefix="test.",
            )
        if preds is not None:
            folder = tmp_path / run_id / "evaluate"
            folder.mkdir(parents=True)
            preds.to_csv(folder / "predictions.csv", index=False)
            tracking.log_artifacts(folder, "evaluate")
        if servable:
            mlflow.pyfunc.log_model(name="model", python_model=FixedProbabilities(), pip_requirements=[])
    return run_id


def run_compare(tmp_path: Path, version: str = "v1", metric: str = "macro_f1") -> dict:
    """The compare stage after an evaluation on ``version``, with ``tmp_path`` as the repository."""
    write_json(tmp_path / paths.EVALUATE_JSON, {"data_version": version})
    return compare_runs(CompareSettings(metric=metric, registered_model=NAME), tmp_path)


def champion() -> tuple[int, str]:
    """(version, run_id) behind chestxray@champion, read back from the registry."""
    found = MlflowClient(tracking.tracking_uri()).get_model_version_by_alias(NAME, "champion")
    return int(found.version), found.run_id


def n_versions() -> int:
    return len(MlflowClient(tracking.tracking_uri()).search_model_versions(f"name = '{NAME}'"))


# Ranking


def test_compare_ranks_evaluated_runs_of_the_same_data_version(mlflow_store, tmp_path, caplog):
    a = log_run("cnn", "v1", 0.61, accuracy=0.9)
    b = log_run("vgg19", "v1", 0.82, accuracy=0.7)
    log_run("resnet50", "v1", None)  # trained, never evaluated
    log_run("mobilenetv2", "v2", 0.99)  # other data
    with caplog.at_level(logging.WARNING, logger="chestxray.judge.compare"):
        summary = run_compare(tmp_path)
    assert summary["n_runs"] == 2
    assert [r["run_id"] for r in summary["leaderboard"]] == [b, a]
    assert summary["best"] == {
        "run_id": b,
        "run_name": summary["leaderboard"][0]["run_name"],
        "model": "vgg19",
        "macro_f1": 0.82,
    }
    row = summary["leaderboard"][0]
    assert (row["covid_sensitivity"], row["covid_specificity"], row["epochs"], row["params"], row["model_mb"]) == (
        0.9,
        0.8,
        3,
        1234,
        4.2,
    )
    assert (row["weights"], row["image_size"], row["imbalance"], row["ece"], row["train_seconds"]) == (
        "none",
        "64",
        "class_weight",
        0.04,
        12.5,
    )
    assert row["macro_f1_low"] == pytest.approx(0.765) and row["macro_f1_high"] == pytest.approx(0.867)
    assert row["accuracy_low"] is None and row["balanced_accuracy"] is None
    # no logged model: nothing registered, no champion; no predictions: no McNemar
    assert summary["champion"] is None and summary["mcnemar"] is None and n_versions() == 0
    assert f"the best run {b} logged no model 'model'" in caplog.text
    assert f"no McNemar test for {row['run_name']} ({b})" in caplog.text
    assert read_json(tmp_path / paths.COMPARE_JSON) == summary
    board = (tmp_path / paths.LEADERBOARD_MD).read_text()
    assert "`v1`" in board and board.index("vgg19") < board.index("| cnn") and "No champion yet." in board
    assert "★" not in board
    png_size(tmp_path / paths.LEADERBOARD_PNG)


def test_ranking_by_another_metric_changes_the_order(mlflow_store):
    a = log_run("cnn", "v1", 0.61, accuracy=0.9)
    b = log_run("vgg19", "v1", 0.82, accuracy=0.7)
    c = log_run("resnet50", "v1", 0.82, accuracy=0.7)  # ties: the earlier run first
    runs = tracking.runs_for("v1")
    ranked = {
        name: [r["run_id"] for r in leaderboard.rows(runs, metrics.get(name))] for name in ("macro_f1", "accuracy")
    }
    assert ranked == {"macro_f1": [b, c, a], "accuracy": [a, b, c]}
    assert leaderboard.rows(runs, metrics.get("roc_auc_macro"))[0]["roc_auc_macro"] == 0.95
    assert leaderboard.rows(runs, metrics.get("weighted_f1")) == []  # never logged: no run is ranked


def test_a_lower_is_better_metric_ranks_and_crowns_the_lowest(mlflow_store, tmp_path):
    """compare.metric may be any metric of the registry; ece and log_loss are better when lower."""
    high = log_run("cnn", "v1", 0.9, servable=True)
    with tracking.run(run_id=high):
        tracking.log_metrics({"ece": 0.10}, prefix="test.")
    low = log_run("vgg19", "v1", 0.5, servable=True)  # ece 0.04 (log_run's)
    summary = run_compare(tmp_path, metric="ece")
    assert [r["run_id"] for r in summary["leaderboard"]] == [low, high]
    assert summary["champion"]["run_id"] == low and summary["champion"]["value"] == 0.04
    with tracking.run(run_id=high):  # now better than the champion
        tracking.log_metrics({"ece": 0.01}, prefix="test.")
    moved = run_compare(tmp_path, metric="ece")["champion"]
    assert moved["run_id"] == high and moved["reason"].endswith("ece 0.0100 < 0.0400")
    with tracking.run(run_id=low):  # a metric that is not a leaderboard column ranks all the same
        tracking.log_metrics({"log_loss": 0.3}, prefix="test.")
    with tracking.run(run_id=high):
        tracking.log_metrics({"log_loss": 0.2}, prefix="test.")
    assert [r["run_id"] for r in run_compare(tmp_path, metric="log_loss")["leaderboard"]] == [high, low]


def test_compare_with_no_evaluated_run(mlflow_store, tmp_path):
    summary = run_compare(tmp_path, "none-yet")
    assert summary == {
        "data_version": "none-yet",
        "metric": "macro_f1",
        "n_runs": 0,
        "best": None,
        "champion": None,
        "mcnemar": None,
        "leaderboard": [],
    }
    assert "_No runs yet._" in (tmp_path / paths.LEADERBOARD_MD).read_text()
    png_size(tmp_path / paths.LEADERBOARD_PNG)


# McNemar


def test_mcnemar_counts_discordant_images_and_gives_the_exact_p_value():
    # 20 shared images: 7 only the first gets right, 1 only the second, 10 both, 2 neither
    first = [True] * 7 + [False] + [True] * 10 + [False] * 2
    second = [False] * 7 + [True] + [True] * 10 + [False] * 2
    result = mcnemar(predictions(first), predictions(second).iloc[::-1])  # joined on path, not row order
    assert result == {
        "n": 20,
        "a_only_correct": 7,
        "b_only_correct": 1,
        "p_value": pytest.approx(0.0703125),
        "significant": False,
    }
    # 2 · Σ_{i ≤ 1} C(8, i) / 2^8 = 2 · 9 / 256
    assert result["p_value"] == pytest.approx(2 * 9 / 256, abs=1e-12)


def test_mcnemar_significant_when_only_one_model_is_ever_right_alone():
    result = mcnemar(predictions([True] * 12), predictions([False] * 10 + [True] * 2))
    assert result == {
        "n": 12,
        "a_only_correct": 10,
        "b_only_correct": 0,
        "p_value": pytest.approx(2 / 1024),
        "significant": True,
    }


def test_mcnemar_with_no_discordant_image_is_p_one():
    assert mcnemar(predictions([True, False]), predictions([True, False]))["p_value"] == 1.0


def test_mcnemar_refuses_different_images_or_labels():
    base = predictions([True] * 20)
    other_paths = base.assign(path=[f"q{i:02d}.png" for i in range(20)])
    assert mcnemar(base, other_paths) is None
    assert mcnemar(base, base.iloc[:19]) is None
    assert mcnemar(base, predictions([True] * 20, actual_flip=3)) is None
    assert mcnemar(pd.concat([base, base.iloc[:1]]), pd.concat([base, base.iloc[:1]])) is None  # a path twice


# Champion alias


def test_champion_moves_only_when_the_metric_improves(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.80, servable=True)
    first = run_compare(tmp_path)["champion"]
    assert first["moved"] is True and (first["version"], first["run_id"]) == (1, a) and champion() == (1, a)
    assert "no champion yet" in first["reason"]
    version = MlflowClient(tracking.tracking_uri()).get_model_version(NAME, "1")
    assert version.tags == {"data_version": "v1", "test.macro_f1": "0.8"}

    again = run_compare(tmp_path)["champion"]  # nothing new: no new version, the alias stays
    assert again["moved"] is False and n_versions() == 1 and champion() == (1, a)

    log_run("vgg19", "v1", 0.70, servable=True)  # worse
    worse = run_compare(tmp_path)["champion"]
    assert worse["moved"] is False and n_versions() == 1 and champion() == (1, a)

    c = log_run("resnet50", "v1", 0.90, servable=True)  # better
    better = run_compare(tmp_path)["champion"]
    assert better == {
        "name": NAME,
        "version": 2,
        "run_id": c,
        "run_name": better["run_name"],
        "model": "resnet50",
        "value": 0.9,
        "moved": True,
        "reason": f"v2 (run {c}) beats champion v1: macro_f1 0.9000 > 0.8000",
    }
    assert champion() == (2, c) and n_versions() == 2


def test_equal_metric_keeps_the_champion(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.80, servable=True)
    b = log_run("vgg19", "v1", 0.80, servable=True)
    version, _ = tracking.register_model(NAME, b, {})
    tracking.set_alias(NAME, "champion", version)  # the later of two equal runs is champion
    summary = run_compare(tmp_path)
    assert summary["best"]["run_id"] == a  # ties rank the earlier run first …
    assert summary["champion"]["moved"] is False and champion() == (1, b)  # … but it does not beat the champion
    assert summary["champion"]["reason"] == f"champion stays v1 (run {b}, macro_f1 0.8000 ≥ 0.8000 of run {a})"
    assert n_versions() == 2  # the best run is registered all the same


def test_a_new_model_of_the_champions_run_replaces_it(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.80, servable=True)
    run_compare(tmp_path)
    with tracking.run(run_id=a):  # evaluate ran again on the same run: a new model (e.g. a new threshold)
        mlflow.pyfunc.log_model(name="model", python_model=FixedProbabilities(), pip_requirements=[])
    summary = run_compare(tmp_path)
    assert summary["champion"]["moved"] is True and champion() == (2, a)
    assert summary["champion"]["reason"] == f"v2 is a newer model of the champion's run {a}: it replaces v1"
    run_compare(tmp_path)
    assert n_versions() == 2 and champion() == (2, a)


def test_champion_from_another_data_version_is_superseded(mlflow_store, tmp_path, caplog):
    old = log_run("cnn", "v1", 0.95, servable=True)
    run_compare(tmp_path, "v1")
    assert champion() == (1, old)
    new = log_run("cnn", "v2", 0.60, servable=True)  # lower, but on another test set
    with caplog.at_level(logging.WARNING, logger="chestxray.judge.compare"):
        summary = run_compare(tmp_path, "v2")
    assert summary["champion"]["moved"] is True and champion() == (2, new)
    assert "evaluated on data version v1, not v2: metrics on different test sets cannot be compared" in caplog.text


# compare.json and the reports


def test_compare_json_leaderboard_and_chart(mlflow_store, tmp_path):
    first = [True] * 7 + [False] + [True] * 10 + [False] * 2
    second = [False] * 7 + [True] + [True] * 10 + [False] * 2
    a = log_run("resnet50", "v1", 0.884, accuracy=0.9, servable=True, preds=predictions(first), tmp_path=tmp_path)
    b = log_run("cnn", "v1", 0.75, accuracy=0.6, servable=True, preds=predictions(second), tmp_path=tmp_path)
    summary = run_compare(tmp_path)
    names = {row["run_id"]: row["run_name"] for row in summary["leaderboard"]}
    assert read_json(tmp_path / paths.COMPARE_JSON) == summary
    assert summary["metric"] == "macro_f1" and summary["n_runs"] == 2 and summary["data_version"] == "v1"
    assert summary["best"] == {"run_id": a, "run_name": names[a], "model": "resnet50", "macro_f1": 0.884}
    assert summary["mcnemar"] == {
        "run_a": a,
        "run_b": b,
        "model_a": "resnet50",
        "model_b": "cnn",
        "n": 20,
        "a_only_correct": 7,
        "b_only_correct": 1,
        "p_value": pytest.approx(0.0703125),
        "significant": False,
    }
    assert {k: summary["champion"][k] for k in ("name", "version", "run_id", "model", "value", "moved")} == {
        "name": NAME,
        "version": 1,
        "run_id": a,
        "model": "resnet50",
        "value": 0.884,
        "moved": True,
    }
    board = (tmp_path / paths.LEADERBOARD_MD).read_text()
    assert f"`chestxray@champion` → version 1, run {names[a]} (`{a}`" in board
    rows = [line for line in board.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| ★ | 1 |") and rows[1].startswith("|  | 2 |")
    assert "| 0.884 [0.829, 0.931] |" in rows[0] and "| 0.900 |" in rows[0]
    assert "| 4.200 |" in rows[0] and "| class_weight |" in rows[0]
    assert f"#1 {names[a]} vs #2 {names[b]} on the same 20 test images: 7 right only by #1, 1 only by #2" in board
    assert "p = 0.07031: they do not differ significantly (α = 0.05)" in board
    width, height = png_size(tmp_path / paths.LEADERBOARD_PNG)
    assert 400 < width < 2000 and 150 < height < 1000
