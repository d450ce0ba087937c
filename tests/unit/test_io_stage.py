"""Atomic writes keep old outputs on failure; the stage edge turns a UserError into one line."""

from __future__ import annotations

import logging
import shutil

import pytest

from chestxray.errors import UserError
from chestxray.io import atomic_path, read_json, write_json
from chestxray.stage import run_stage
from conftest import REPO


def write_then_crash(target, write, is_dir: bool = False) -> None:
    """Write through ``atomic_path`` and crash before it completes."""
    with atomic_path(target, is_dir=is_dir) as tmp:
        write(tmp)
        raise RuntimeError("crash mid-write")


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        write_then_crash(target, lambda tmp: tmp.write_text("half"))
    assert read_json(target) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "raw"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        write_then_crash(target, lambda tmp: (tmp / "new.png").write_bytes(b"new"), is_dir=True)
    assert [p.name for p in target.iterdir()] == ["old.png"]
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "new.png").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["new.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_stage_edge_reports_user_errors_in_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        run_stage("train", lambda params: None)
    assert exit_.value.code == 1
    assert [r.getMessage() for r in caplog.records] == ["params.yaml: missing key 'model'; add it (see docs/params.md)"]

    def broken(params):
        raise UserError("data/raw: unknown dataset layout")

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        run_stage("validate", broken)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("validate", "data/raw: unknown dataset layout")]
