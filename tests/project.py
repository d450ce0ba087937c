"""A copy of the project as users run it, for the integration tests: the real `dvc`, `git` and
`chestxray` commands as subprocesses in a fresh git repo of the project's files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from conftest import KERAS_HOME, REPO

# The default run with a lighter CNN and fewer epochs (a sixth of the default's training time here; it
# still learns, see the first test), and a lighter MobileNetV2 for the other-model experiment: these
# tests check the pipeline's machinery, and every experiment here trains
OVERRIDES = {"backbones.cnn.filters": [8, 16, 32], "train.epochs": 8, "backbones.mobilenetv2.alpha": 0.35}


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a command run as a user would: the test venv first on PATH, the session's
    KERAS_HOME, no MLflow or DVC variables of the test process; then ``extra`` (e.g. a tracking URI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", KERAS_HOME=str(KERAS_HOME), DVC_NO_ANALYTICS="1"
    )
    return {**env, **(extra or {})}


def run(repo: Path, *args: str, timeout: int = 900, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run a command in ``repo`` (see ``environment``; ``env`` adds to it); return (exit code, output)."""
    done = subprocess.run(args, cwd=repo, env=environment(env), capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def sh(repo: Path, *args: str, timeout: int = 900, env: Mapping[str, str] | None = None) -> str:
    """Run a command that must succeed; return its output."""
    code, output = run(repo, *args, timeout=timeout, env=env)
    assert code == 0, f"{' '.join(args)} failed ({code}):\n{output[-6000:]}"
    return output


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def set_params(path: Path, values: dict) -> None:
    raw = yaml.safe_load(path.read_text())
    for key, value in values.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def clean_copy(root: Path) -> Path:
    """Copy the project's files into ``root`` as a new git repo (no results, no lock file)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not name.startswith(("metrics/", "reports/")) and name != "dvc.lock":
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    set_params(root / "params.yaml", OVERRIDES)
    sh(root, "git", "init", "-q")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    return root
