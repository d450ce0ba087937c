"""Quiet by default: the stages and the command line show the project's lines, not TensorFlow's
start-up lines (unless -v or CHESTXRAY_VERBOSE), and predict outside the project leaves nothing behind."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chestxray import stage
from chestxray.__main__ import main
from conftest import REPO

TF_START_UP = ("absl::InitializeLog", "cpu_feature_guard", "oneDNN")


def test_every_stage_script_imports_the_stage_edge_before_any_other_package_module():
    """Importing chestxray.stage quiets TensorFlow, which reads its log level once, when imported:
    a stage whose step module came first would print TensorFlow's start-up lines."""
    for script in sorted((REPO / "stages").glob("*.py")):
        imports = [
            node
            for node in ast.parse(script.read_text(encoding="utf-8")).body
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chestxray")
        ]
        first = imports[0]
        assert first.module == "chestxray" and "stage" in [a.name for a in first.names], script.name


def test_a_stage_that_imports_tensorflow_prints_only_its_own_line(tmp_path):
    """The real train script (its step module imports TensorFlow) in a folder without params.yaml."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", stage.VERBOSE)}
    done = subprocess.run(
        [sys.executable, str(REPO / "stages/train.py")],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.endswith(" ERROR train: params.yaml: not found; run from the repository root")
    assert not any(noise in done.stderr for noise in TF_START_UP)


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder outside the project, no store named in the environment, no verbosity asked for."""
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "TF_CPP_MIN_LOG_LEVEL", stage.VERBOSE):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scan.png").write_bytes(b"never decoded: the store is looked for first")
    return tmp_path


def test_predict_outside_the_project_creates_nothing_and_says_where_to_run(outside, caplog):
    assert main(["predict", "scan.png"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"{outside / 'mlflow.db'}: no MLflow store here and {outside} is not the project (no dvc.yaml); run from the"
        " project's root, or set MLFLOW_TRACKING_URI to its store (sqlite:///<project>/mlflow.db)"
    ]
    assert [p.name for p in outside.iterdir()] == ["scan.png"]  # no empty mlflow.db, no mlartifacts/


@pytest.mark.parametrize(("argv", "level"), [([], "1"), (["-v"], "0"), (["--verbose"], "0")])
def test_verbose_sets_tensorflow_s_log_level_before_it_is_imported(outside, argv, level):
    """TensorFlow is not imported here (the store is missing first); the level it would read is set."""
    assert main([*argv, "predict", "scan.png"]) == 1
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == level
