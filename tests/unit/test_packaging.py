"""What the project installs and ships: the `chestxray` command, the licence, the GPU requirements
kept in step with the CPU ones, and the served model's Dockerfile (linted by hadolint: this machine
has no Docker daemon to build it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO

BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
CPU_TENSORFLOW = "tensorflow-cpu"
GPU_TENSORFLOW = "tensorflow[and-cuda]"


def requirement_lines(name: str) -> list[str]:
    """The lines of a requirements file at the repository root, without comments and blank lines."""
    lines = (REPO / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def tensorflow_version() -> str:
    """The version requirements.txt pins tensorflow-cpu to."""
    (line,) = [line for line in requirement_lines("requirements.txt") if line.startswith(f"{CPU_TENSORFLOW}==")]
    return line.split("==", 1)[1]


def pip_index_versions(name: str) -> subprocess.CompletedProcess:
    """``pip index versions NAME`` in this venv, not waiting long for the registry; ``-vv`` makes pip
    print a connection error as ``Could not fetch URL …`` (without it a registry that cannot be
    reached reads like a package that does not exist)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", name, "-vv", "--retries", "0", "--timeout", "15"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_chestxray_command_is_installed_with_its_verbs():
    result = subprocess.run([BIN / "chestxray", "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    verbs = re.search(r"\{([a-z,-]+)\}", result.stdout).group(1).split(",")
    assert verbs == ["predict", "app", "ui", "promote", "train-workers"]


def test_the_licence_is_mit_in_the_file_and_in_the_installed_metadata():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 The chestxray authors\n" in text
    assert (PYPROJECT["project"]["license"], PYPROJECT["project"]["license-files"]) == ("MIT", ["LICENSE"])
    assert metadata.metadata("chestxray")["License-Expression"] == "MIT"


def test_every_requirement_is_pinned_to_one_version():
    for name in ("requirements.txt", "requirements-gpu.txt"):
        loose = [line for line in requirement_lines(name) if line != "-e ." and "==" not in line]
        assert loose == [], f"{name}: pin these with =="


def test_gpu_requirements_are_the_cpu_ones_with_tensorflow_for_cuda():
    version = tensorflow_version()
    cpu = requirement_lines("requirements.txt")
    expected = [f"{GPU_TENSORFLOW}=={version}" if line == f"{CPU_TENSORFLOW}=={version}" else line for line in cpu]
    assert requirement_lines("requirements-gpu.txt") == expected


def test_the_package_itself_requires_no_tensorflow_build():
    """`-e .` is in both files: a TensorFlow build among the package's own dependencies would be
    installed beside the other one (tensorflow-cpu and tensorflow write the same folder)."""
    names = {Requirement(dep).name for dep in PYPROJECT["project"]["dependencies"]}
    assert names & {"tensorflow", CPU_TENSORFLOW} == set()


def test_the_gpu_tensorflow_version_is_on_the_registry():
    """Asks the package registry, through pip, which TensorFlow versions have a wheel for this
    Python and platform (GPU support is in the same `tensorflow` wheel; `[and-cuda]` adds the
    CUDA libraries). Skipped, with the reason, when pip cannot reach the registry at all."""
    version = tensorflow_version()
    found = pip_index_versions("tensorflow")
    unreachable = re.search(r"^Could not fetch URL .*$", found.stdout + found.stderr, re.M)
    if found.returncode != 0 and unreachable:
        pytest.skip(f"pip cannot reach the package registry: {unreachable.group(0)}")
    available = re.search(r"^Available versions: (.*)$", found.stdout, re.M)
    assert available, f"pip finds no tensorflow: {found.stderr.strip()[-2000:]}"
    assert version in available.group(1).split(", "), f"tensorflow {version} has no wheel for this Python here"


def test_the_dockerfile_passes_hadolint_with_no_finding():
    result = subprocess.run(
        [BIN / "hadolint", "--no-color", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_dockerfile_uses_the_projects_python_and_pinned_requirements():
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    python = re.search(r"^FROM python:(\d+\.\d+)-slim$", text, re.M).group(1)
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert re.search(r"^COPY requirements\.txt ", text, re.M)
    assert re.findall(r"pip install (.*?)\s*(?:\\|&&|$)", text, re.M) == ["--no-cache-dir -r requirements.txt"]
    assert re.search(r"^USER (\d+):\d+$", text, re.M).group(1) != "0"
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    port = re.search(r"^EXPOSE (\d+)$", text, re.M).group(1)
    assert cmd[:3] == ["mlflow", "models", "serve"] and cmd[cmd.index("-p") + 1] == port
    assert f"127.0.0.1:{port}/ping" in re.search(r"^HEALTHCHECK .*\n.*$", text, re.M).group(0)
