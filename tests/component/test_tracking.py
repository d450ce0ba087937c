"""MLflow store resolution and runs, on a real SQLite store."""

from __future__ import annotations

import mlflow

from chestxray import tracking


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
    with tracking.run(tracking.run_tags("cnn", "abc", image_size=64)) as run_id:
        tracking.log_metrics(
            {"a": 1, "nested": {"b": 2.5, "skip": None, "nan": float("nan")}, "flag": True}, prefix="t."
        )
    run = mlflow.get_run(run_id)
    assert run.info.run_name == "brisk-lamb" and run.data.tags["dvc_exp_name"] == "brisk-lamb"
    assert run.data.metrics == {"t.a": 1.0, "t.nested.b": 2.5}
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_resuming_an_unknown_run_starts_a_new_one(mlflow_store):
    with tracking.run(run_id="0" * 32) as run_id:
        pass
    assert run_id != "0" * 32 and mlflow.get_run(run_id).info.status == "FINISHED"
