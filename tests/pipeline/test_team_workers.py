"""Training on two processes as a user runs it (docs/training.md, "GPUs and more machines"):
`python -m chestxray train-workers -n 2 -- dvc repro` in a copy of the team's reproduced project
(the ``team`` fixture: single-process, runs on the team's MLflow server), with
``train.distribute: multiworker``. Worker 0, the chief, runs `dvc repro`; worker 1 runs the train step
beside it on 127.0.0.1, CPU. The chief writes the project's outputs and the one MLflow run; worker 1
writes nothing into the project (a Python audit hook in it records every write under the project);
the model is as good as the single-process one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from project import environment, ran, set_params, sh

from conftest import Team

pytestmark = pytest.mark.integration

TIMEOUT = 1200  # s for the whole launch (a few minutes here); then the launcher is told to stop its workers
EXPERIMENT = "chestxray-workers"  # its own experiment and registered model: the fixture's runs and champion stay
# Loaded by every Python process of the launch (PYTHONPATH); active only in a worker other than the chief:
# records each write Python makes (open for writing, mkdir, rename, remove, …) under $WATCHED.
SITECUSTOMIZE = """
import json, os, sys

task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
if task.get("index", 0) != 0:
    watched = os.path.realpath(os.environ["WATCHED"]) + os.sep
    record = open(os.environ["WRITES_LOG"], "a", buffering=1)
    record.write(f"worker {task['index']} pid {os.getpid()} watched\\n")
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    # event: (index of a path argument, index of the dir_fd it is relative to, or None), per path argument
    PATHS = {"os.mkdir": ((0, 2),), "os.rmdir": ((0, 1),), "os.remove": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
             "os.symlink": ((1, 2),), "os.link": ((1, 3),), "os.chmod": ((0, 2),), "os.utime": ((0, 3),),
             "os.truncate": ((0, None),), "shutil.rmtree": ((0, 1),)}

    def where(path, fd):
        if isinstance(path, int):  # an open file
            return os.readlink(f"/proc/self/fd/{path}")
        base = os.readlink(f"/proc/self/fd/{fd}") if isinstance(fd, int) and fd >= 0 else os.getcwd()
        return os.path.realpath(os.path.join(base, os.fsdecode(path)))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            paths = [where(path, None)] if (any(c in mode for c in "wax+") if mode else flags & WRITE) else []
        elif event in PATHS:
            paths = [where(args[i], None if fd is None else args[fd]) for i, fd in PATHS[event] if args[i] is not None]
        else:
            return
        for full in paths:
            if full.startswith(watched) and "__pycache__" not in full:
                record.write(f"{event} {full}\\n")

    sys.addaudithook(hook)
"""


def launch(root: Path, env: dict[str, str]) -> tuple[int, str, float]:
    """The launcher in ``root``: (exit code, output, seconds). Past ``TIMEOUT`` it gets SIGTERM, on
    which it stops its workers (SIGKILL would leave them running)."""
    command = [sys.executable, "-m", "chestxray", "train-workers", "-n", "2", "--", "dvc", "repro"]
    start = time.perf_counter()
    launcher = subprocess.Popen(
        command, cwd=root, env=environment(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output = launcher.communicate(timeout=TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        launcher.send_signal(signal.SIGTERM)
        output = launcher.communicate(timeout=300)[0]
        pytest.fail(f"train-workers took over {TIMEOUT} s:\n{output[-6000:]}")
    return launcher.returncode, output, time.perf_counter() - start


def record(root: Path, name: str) -> dict:
    return json.loads((root / "reports" / f"{name}.json").read_text())


def test_two_workers_train_through_dvc_repro_and_only_the_chief_writes(team: Team, tmp_path: Path):
    root = tmp_path / "project"
    subprocess.run(["cp", "-a", str(team.root), str(root)], check=True, timeout=300)  # git, DVC cache and all
    # train.batch_size is per replica: half of it on each of 2 workers is the single-process run's global batch
    batch = yaml.safe_load((team.root / "params.yaml").read_text())["train"]["batch_size"]
    set_params(
        root / "params.yaml",
        {"train.distribute": "multiworker", "train.batch_size": batch // 2, "compare.registered_model": EXPERIMENT},
    )
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    writes = tmp_path / "worker-writes.log"
    env = {
        **team.env,
        "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
        "PYTHONPATH": str(hooks),
        "WATCHED": str(root),
        "WRITES_LOG": str(writes),
    }

    probe = {**env, "TF_CONFIG": json.dumps({"task": {"index": 1}}), "WRITES_LOG": str(tmp_path / "probe.log")}
    sh(root, sys.executable, "-c", "open('probe.txt', 'w').close()", env=probe)  # the hook sees a write
    assert (tmp_path / "probe.log").read_text().splitlines()[1] == f"open {root.resolve() / 'probe.txt'}"
    (root / "probe.txt").unlink()

    code, output, seconds = launch(root, env)
    assert code == 0, output[-6000:]
    assert ran(output) == ["check", "train", "evaluate", "audit", "compare"], output[-6000:]
    assert "worker 1 at 127.0.0.1:" in output and "no other worker started" not in output

    # worker 1 ran (its hook says so) and wrote nothing into the project
    lines = writes.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("worker 1 pid "), lines[:20]

    # the chief wrote the stage's outputs, DVC recorded them, and one MLflow training run holds them
    train, evaluate = record(root, "train"), record(root, "evaluate")
    run_id = json.loads((root / "models" / "run.json").read_text())["run_id"]
    assert (root / "models" / "model.keras").stat().st_size > 10_000 and evaluate["run_id"] == run_id
    assert json.loads((root / "metrics" / "train.json").read_text())["best_epoch"] == train["best_epoch"]
    assert "Data and pipelines are up to date." in sh(root, "dvc", "status", env=env, timeout=300)
    client = MlflowClient(team.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["resolved.replicas"] == "2"
    assert runs[0].data.params["resolved.global_batch_size"] == str(batch // 2 * 2)

    # as good as the single-process model of the same project: within its 95 % interval
    reference = record(team.root, "evaluate")
    low, high = reference["ci"]["macro_f1"]["low"], reference["ci"]["macro_f1"]["high"]
    assert low <= evaluate["macro_f1"] <= high, (evaluate["macro_f1"], reference["macro_f1"], low, high, seconds)
