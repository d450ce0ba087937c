"""Atomic writes keep old outputs on failure, follow the umask and clear a killed writer's leftovers;
the stage edge turns a UserError, a full disk, an unwritable path and SIGTERM into one line."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from chestxray import io as io_module
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


def dead_pid() -> int:
    """The pid of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_writes_follow_the_umask(tmp_path):
    """mkstemp makes 0600 files and mkdtemp 0700 folders; the outputs get what the umask allows."""
    code = (
        "import os, sys; os.umask(0o002); from chestxray.io import atomic_path, write_json; "
        "write_json(sys.argv[1] + '/a.json', {}); "
        "ctx = atomic_path(sys.argv[1] + '/d', is_dir=True); tmp = ctx.__enter__(); ctx.__exit__(None, None, None)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o775
    write_json(tmp_path / "b.json", {})  # this process: the usual 022
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o666 & ~io_module.UMASK


def test_a_killed_writers_leftovers_go_with_the_next_write(tmp_path):
    """A writer killed mid-write (SIGKILL: no cleanup runs) leaves its temp folder; the next write
    of the same target removes it, and keeps the temp of a writer that still runs."""
    code = (
        "import os, signal, sys; from chestxray.io import atomic_path\n"
        "with atomic_path(sys.argv[1], is_dir=True) as tmp:\n"
        "    (tmp / 'model.keras').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path / "models")])
    assert killed.returncode == -signal.SIGKILL
    [orphan] = tmp_path.glob(".models.tmp-*")
    assert (orphan / "model.keras").stat().st_size == 1000
    older = tmp_path / ".models.tmp-k2j4h1x9"  # named before temp names carried a pid
    older.mkdir()
    live = tmp_path / f".models.tmp-{os.getpid()}-abc"
    live.mkdir()
    other = tmp_path / f".models.json.tmp-{dead_pid()}-abc"  # another target's: not ours to remove
    other.write_text("x")
    with atomic_path(tmp_path / "models", is_dir=True) as tmp:
        (tmp / "model.keras").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["models", live.name, other.name])


def test_gitignore_hides_temp_names():
    names = [".models.tmp-123-ab", "data/processed/.cache.tmp-9-x", "metrics/.train.json.tmp-5-y.json", ".raw.old-7-z"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *names], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert ignored == names


@pytest.fixture
def read_only():
    """Make a folder unwritable for real: chmod for a user; root ignores modes, so as root the
    folder is made immutable (chattr +i: EPERM even for root)."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], check=True)
        else:
            path.chmod(0o555)
        made.append(path)
        return path

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755)


def test_an_unwritable_folder_is_one_line_naming_the_target(tmp_path, monkeypatch, caplog, read_only):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    write_json(metrics / "evaluate.json", {"macro_f1": 0.88})
    read_only(metrics)
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        run_stage("evaluate", lambda params: write_json(Path("metrics/evaluate.json"), {"macro_f1": 0.5}))
    assert exit_.value.code == 1
    denied = os.strerror(errno.EPERM if os.geteuid() == 0 else errno.EACCES)
    assert [r.getMessage() for r in caplog.records] == [
        f"metrics/evaluate.json: {denied}; make it writable (or work in a copy you own) and run again"
    ]
    assert read_json(metrics / "evaluate.json") == {"macro_f1": 0.88}


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, caplog):
    """ENOSPC is injected into the write: a full disk cannot be made everywhere the tests run (the
    next test fills a real tmpfs where mounting one is allowed)."""

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    write_json(tmp_path / "split.json", {"groups": 1000})
    monkeypatch.setattr(Path, "write_text", full)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        run_stage("split", lambda params: write_json(Path("split.json"), {"groups": 1}))
    assert exit_.value.code == 1
    assert [r.getMessage() for r in caplog.records] == [
        "split.json: No space left on device; free space on its disk and run again"
    ]
    monkeypatch.undo()
    assert read_json(tmp_path / "split.json") == {"groups": 1000}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "split.json"]


def test_a_really_full_disk_is_one_line_and_keeps_the_old_file(tiny_disk):
    tiny_disk = tiny_disk("64k")
    shutil.copy(REPO / "params.yaml", tiny_disk.parent / "params.yaml")
    write_json(tiny_disk / "evaluate.json", {"macro_f1": 0.88})
    code = (
        "from pathlib import Path; from chestxray.io import write_json; from chestxray.stage import run_stage\n"
        "run_stage('evaluate', lambda p: write_json(Path('disk/evaluate.json'), {'x': 'y' * 200_000}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tiny_disk.parent, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert [line.split(" ERROR ")[1] for line in done.stderr.splitlines() if " ERROR " in line] == [
        "evaluate: disk/evaluate.json: No space left on device; free space on its disk and run again"
    ]
    assert read_json(tiny_disk / "evaluate.json") == {"macro_f1": 0.88}
    assert [p.name for p in tiny_disk.iterdir()] == ["evaluate.json"]


def test_sigterm_ends_a_stage_in_one_line(tmp_path):
    """SIGTERM becomes KeyboardInterrupt in the stage (so `with` blocks and MLflow runs close) and
    the stage ends with one line and exit 128 + 15."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    code = (
        "import time; from chestxray.stage import run_stage\n"
        "def step(params):\n"
        "    try:\n"
        "        print('ready', flush=True); time.sleep(60)\n"
        "    finally:\n"
        "        open('cleaned', 'w').close()\n"
        "run_stage('train', step)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert [line.split(" ERROR ")[1] for line in err.splitlines() if " ERROR " in line] == [
        "train: stopped by SIGTERM; run it again to finish (dvc repro)"
    ]
    assert "Traceback" not in err and (tmp_path / "cleaned").exists()
