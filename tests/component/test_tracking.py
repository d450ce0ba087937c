"""MLflow store resolution and runs, on a real SQLite store."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import mlflow
import pytest

from chestxray import tracking
from chestxray.errors import UserError
from conftest import REPO, fill


def test_store_is_at_dvc_root_unless_a_tracking_uri_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path)  # a queued experiment runs elsewhere: the store must not follow it
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.delenv("DVC_ROOT")
    with pytest.raises(UserError, match="no MLflow store here"):  # not the project: MLflow would create one
        tracking.tracking_uri()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # the project's root, before its first run
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
    assert run.info.run_name == "cnn-abc-brisk-lamb" and run.data.tags["dvc_exp_name"] == "brisk-lamb"
    assert run.data.metrics == {"t.a": 1.0, "t.nested.b": 2.5}
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_resuming_an_unknown_run_starts_a_new_one(mlflow_store):
    with tracking.run(run_id="0" * 32) as run_id:
        pass
    assert run_id != "0" * 32 and mlflow.get_run(run_id).info.status == "FINISHED"


def raise_in_run(error: type[BaseException], started: list[str]) -> None:
    """Open a new run, note its id in ``started``, and raise ``error`` in it."""
    with tracking.run({"stage": "test"}) as run_id:
        started.append(run_id)
        raise error


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")])
def test_a_new_run_ends_killed_when_interrupted_and_failed_on_an_error(mlflow_store, error, status):
    started: list[str] = []
    with pytest.raises(error):
        raise_in_run(error, started)
    info = mlflow.get_run(started[0]).info
    assert info.status == status
    assert info.end_time is not None and info.end_time >= info.start_time


@pytest.mark.parametrize("error", [None, RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("status", ["FINISHED", "KILLED"])
def test_a_resumed_run_ends_as_it_was_whatever_happens(mlflow_store, status, error):
    with contextlib.suppress(KeyboardInterrupt), tracking.run({"stage": "train"}) as run_id:
        if status == "KILLED":
            raise KeyboardInterrupt
    before = mlflow.get_run(run_id).info
    time.sleep(0.01)  # so a new end time could not equal the old one
    with contextlib.suppress(RuntimeError, KeyboardInterrupt), tracking.run(run_id=run_id):
        tracking.log_metrics({"accuracy": 0.5}, prefix="test.")
        assert mlflow.get_run(run_id).info.status == "RUNNING"
        if error is not None:
            raise error
    after = mlflow.get_run(run_id)
    assert (after.info.status, after.info.end_time) == (before.status, before.end_time)
    assert after.data.metrics == {"test.accuracy": 0.5} and tracking.RESUMED not in after.data.tags


# Opens a run (a new one, or resumes argv[1]), says its id, and waits to be killed.
HOLDER = """
import sys, time
from chestxray import tracking
with tracking.run({"stage": "holder"}, run_id=sys.argv[1] or None) as run_id:
    print(run_id, flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def holder(run_id: str = "") -> Iterator[tuple[subprocess.Popen, str]]:
    """A real process holding a RUNNING run (it inherits the test's MLFLOW_TRACKING_URI): the
    process and the run id; killed at the end if still alive."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, run_id], stdout=subprocess.PIPE, text=True)
    try:
        yield process, process.stdout.readline().strip()
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def kill(process: subprocess.Popen) -> None:
    """kill -9, as a user killing `dvc repro` would; then reap it (a zombie would be gone too)."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_runs_of_dead_processes_of_this_host_are_reaped_and_no_others(mlflow_store, caplog):
    with holder() as (dead, orphan), holder() as (_, live):
        kill(dead)
        client = mlflow.MlflowClient(mlflow_store)
        tags = client.get_run(orphan).data.tags
        assert (tags["owner.host"], tags["owner.pid"]) == (socket.gethostname(), str(dead.pid))
        exp = client.get_run(orphan).info.experiment_id
        elsewhere = client.create_run(exp, tags={**tags, "owner.host": "another-host"}).info.run_id
        # this pid, alive, but started at another time: a pid the system reused
        reused = client.create_run(exp, tags={**tags, "owner.pid": str(os.getpid()), "owner.pid_start": "1"})
        untagged = client.create_run(exp).info.run_id  # not started by this project: not ours to judge
        with caplog.at_level(logging.INFO, logger="chestxray.tracking"), tracking.run({"stage": "next"}):
            pass
        status = {run_id: client.get_run(run_id).info.status for run_id in (orphan, reused.info.run_id)}
        assert status == {orphan: "KILLED", reused.info.run_id: "KILLED"}
        assert client.get_run(orphan).info.end_time is not None
        for run_id in (live, elsewhere, untagged):
            assert client.get_run(run_id).info.status == "RUNNING"
        reaped = [r.getMessage() for r in caplog.records if "which is gone" in r.getMessage()]
        assert len(reaped) == 2 and any(orphan in line and str(dead.pid) in line for line in reaped)


def test_a_resumed_run_whose_process_died_is_put_back_as_it_was(mlflow_store):
    with tracking.run({"stage": "train"}) as run_id:
        pass
    before = mlflow.get_run(run_id).info
    with holder(run_id) as (dead, resumed):
        assert resumed == run_id and mlflow.get_run(run_id).info.status == "RUNNING"
        kill(dead)
        with tracking.run({"stage": "next"}):
            pass
    after = mlflow.get_run(run_id)
    assert (after.info.status, after.info.end_time) == ("FINISHED", before.end_time)
    assert tracking.RESUMED not in after.data.tags


def test_runs_get_different_names_under_the_same_global_seed(mlflow_store, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    names = []
    for _ in range(2):
        random.seed(42)  # what keras.utils.set_random_seed does to the `random` module
        with tracking.run(tracking.run_tags("cnn", "abc", image_size=64)) as run_id:
            names.append(mlflow.get_run(run_id).info.run_name)
    assert names[0] != names[1]
    assert all(re.fullmatch(r"cnn-abc-[0-9a-f]{8}", name) for name in names), names


def test_a_run_name_says_what_ran_on_which_data_in_which_experiment(monkeypatch):
    train = tracking.run_tags("vgg16", "4bdd84e5c77a", image_size=224)
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lamb")
    assert tracking.run_name(train) == "vgg16-4bdd84e5c77a-brisk-lamb"
    assert tracking.run_name({"stage": "eda"}, "eda") == "eda-brisk-lamb"
    monkeypatch.delenv("DVC_EXP_NAME")  # plain `dvc repro`: a short random id instead
    names = {tracking.run_name(train) for _ in range(50)}
    assert len(names) == 50 and all(re.fullmatch(r"vgg16-4bdd84e5c77a-[0-9a-f]{8}", n) for n in names), names
    assert re.fullmatch(r"validate-[0-9a-f]{8}", tracking.run_name({"stage": "validate"}, "validate"))
    assert re.fullmatch(r"test-[0-9a-f]{8}", tracking.run_name({"stage": "test"}))
    assert re.fullmatch(r"run-[0-9a-f]{8}", tracking.run_name({}))


def test_the_experiment_is_for_model_training_and_carries_the_runs_view(mlflow_store):
    client = mlflow.MlflowClient(mlflow_store)
    exp = tracking.experiment_id()
    assert client.get_experiment(exp).tags == tracking.EXPERIMENT_TAGS
    view = json.loads(tracking.EXPERIMENT_TAGS[tracking.RUNS_VIEW_TAG])
    assert view["selectedColumns"][:2] == ["metrics.`val.macro_f1`", "metrics.`test.macro_f1`"]
    assert tracking.ui_url("http://host:8080/") == (
        f"http://host:8080/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey=headline"
    )
    assert tracking.ui_url().startswith(f"http://127.0.0.1:5000/#/experiments/{exp}/runs?")  # `mlflow ui`'s default


def test_an_existing_experiment_gets_the_tags_it_lacks_and_keeps_a_kind_set_in_the_ui(mlflow_store):
    client = mlflow.MlflowClient(mlflow_store)
    old = client.create_experiment("chestxray")  # as earlier versions of the project made it
    assert tracking.experiment_id() == old and client.get_experiment(old).tags == tracking.EXPERIMENT_TAGS
    client.set_experiment_tag(old, tracking.EXPERIMENT_KIND_TAG, "genai_development")  # a user's choice
    client.set_experiment_tag(old, tracking.RUNS_VIEW_TAG, "{}")  # an older view of the project
    tracking.experiment_id()
    tags = client.get_experiment(old).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"
    assert tags[tracking.RUNS_VIEW_TAG] == tracking.EXPERIMENT_TAGS[tracking.RUNS_VIEW_TAG]


def test_only_a_ready_logged_model_counts(mlflow_store):
    client = mlflow.MlflowClient(mlflow_store)
    with tracking.run({"stage": "train"}) as run_id:
        exp = mlflow.get_run(run_id).info.experiment_id
        assert tracking.logged_model_id(run_id) is None
        ready = mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=exp).model_id
        client.finalize_logged_model(ready, "READY")
        time.sleep(0.01)  # the half-logged ones are newer
        failed = mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=exp).model_id
        client.finalize_logged_model(failed, "FAILED")
        # PENDING, as a process killed while logging leaves it
        mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=exp)
    assert len(tracking.logged_model_ids(run_id)) == 3
    assert tracking.logged_model_id(run_id) == ready
    tracking.delete_logged_model(ready)
    assert tracking.logged_model_id(run_id) is None


def test_a_store_on_a_full_disk_is_one_line_and_the_earlier_run_keeps_its_state(tiny_disk, monkeypatch):
    """SQLite says 'database or disk is full' (an MlflowException, which MLflow also logs with its
    traceback); the stage ends with one line naming the store, and the run it resumed is unchanged."""
    disk = tiny_disk("3m")
    store = f"sqlite:///{disk / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with tracking.run({"stage": "train"}) as run_id:
        pass
    before = mlflow.MlflowClient(store).get_run(run_id).info
    client = mlflow.MlflowClient(store)
    client.create_registered_model("chestxray")
    version = client.create_model_version("chestxray", str(disk), run_id).version
    fill(disk)
    with pytest.raises(
        OSError, match="No space left on device"
    ) as error:  # the registry's writes too (compare writes outside a run)
        tracking.set_alias("chestxray", "champion", int(version))
    assert (error.value.errno, error.value.filename) == (errno.ENOSPC, str(disk / "mlflow.db"))
    shutil.copy(REPO / "params.yaml", disk.parent / "params.yaml")
    code = (
        "import sys; from chestxray import tracking; from chestxray.stage import run_stage\n"
        "def step(params):\n"
        "    with tracking.run(run_id=sys.argv[1]):\n"
        "        tracking.log_metrics({f'm{i}': i for i in range(2000)})\n"
        "run_stage('evaluate', step)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, run_id], cwd=disk.parent, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert [line.split(" ERROR ")[1] for line in done.stderr.splitlines() if " ERROR " in line] == [
        f"evaluate: {disk / 'mlflow.db'}: No space left on device; free space on its disk and run again"
    ]
    after = mlflow.MlflowClient(store).get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)
