"""MLflow store resolution and the compare stage's leaderboard, on a real SQLite store."""

from __future__ import annotations

import mlflow
import pytest

from chestxray import tracking
from chestxray.compare import compare_runs
from chestxray.io import read_json


def test_store_is_at_dvc_root_unless_a_tracking_uri_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path)  # a queued experiment runs elsewhere: the store must not follow it
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.delenv("DVC_ROOT")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_default_store_keeps_artifacts_beside_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lamb")
    with tracking.run(tracking.run_tags("cnn", "abc")) as run_id:
        tracking.log_metrics({"a": 1, "nested": {"b": 2.5, "skip": None, "nan": float("nan")}, "flag": True}, prefix="t.")
    run = mlflow.get_run(run_id)
    assert run.info.run_name == "brisk-lamb" and run.data.tags["dvc_exp_name"] == "brisk-lamb"
    assert run.data.metrics == {"t.a": 1.0, "t.nested.b": 2.5}
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_resuming_an_unknown_run_starts_a_new_one(mlflow_store):
    with tracking.run(run_id="0" * 32) as run_id:
        pass
    assert run_id != "0" * 32 and mlflow.get_run(run_id).info.status == "FINISHED"


def log_run(model: str, version: str, f1: float | None) -> str:
    with tracking.run(tracking.run_tags(model, version)) as run_id:
        tracking.log_params({"model": model, "train": {"weights": "none"}, "data": {"image_size": 64}})
        tracking.log_metrics({"train.epochs_run": 3, "train.params": 1234})
        if f1 is not None:
            tracking.log_metrics({"macro_f1": f1, "accuracy": f1 + 0.1, "per_class": {"COVID": {"recall": 0.9, "specificity": 0.8}}}, prefix="test.")
    return run_id


def test_compare_ranks_evaluated_runs_of_the_same_data_version(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.61)
    b = log_run("vgg19", "v1", 0.82)
    log_run("resnet50", "v1", None)  # trained, never evaluated
    log_run("mobilenetv2", "v2", 0.99)  # other data
    summary = compare_runs("v1", tmp_path / "compare.json", tmp_path / "leaderboard.md")
    assert summary["n_runs"] == 2
    assert [r["run_id"] for r in summary["leaderboard"]] == [b, a]
    assert summary["best"]["model"] == "vgg19" and summary["best"]["macro_f1"] == pytest.approx(0.82)
    row = summary["leaderboard"][0]
    assert (row["covid_sensitivity"], row["covid_specificity"], row["epochs"], row["params"]) == (0.9, 0.8, 3, 1234)
    assert read_json(tmp_path / "compare.json") == summary
    board = (tmp_path / "leaderboard.md").read_text()
    assert "`v1`" in board and board.index("vgg19") < board.index("| cnn")
    assert board.count("★") == 2  # the best row and the footer


def test_compare_with_no_evaluated_run(mlflow_store, tmp_path):
    summary = compare_runs("none-yet", tmp_path / "compare.json", tmp_path / "leaderboard.md")
    assert summary == {"data_version": "none-yet", "n_runs": 0, "best": None, "leaderboard": []}
    assert "_No runs yet._" in (tmp_path / "leaderboard.md").read_text()
