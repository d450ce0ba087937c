"""train.distribute: multiworker for real: worker processes on 127.0.0.1 (CPU) with their own TF_CONFIG,
each running the train stage's script. Only the chief writes the project's outputs and the MLflow run;
each worker sees its own share of every batch; a step over two replicas is the step of one process;
the launcher (chestxray train-workers) starts, waits for and stops the workers."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from chestxray import paths
from chestxray.__main__ import free_ports
from chestxray.counts import confusion, macro_f1
from chestxray.io import read_json
from chestxray.learn import cluster
from chestxray.learn.models import Preprocess  # noqa: F401  (registered: load_model needs it)
from conftest import REPO, make_params, project

TINY = {"backbones.cnn.filters": [8, 16], "train.epochs": 2, "train.batch_size": 8, "train.distribute": "multiworker"}
TIMEOUT = 600  # s for any one process: a worker that waits for a peer that never comes fails the test, not CI


def stage_project(root: Path, cache: Path) -> Path:
    """``root`` as a project for the train stage's script: params.yaml (``TINY``) and the cache linked in."""
    root.mkdir(parents=True)
    raw = make_params(**TINY).model_dump(by_alias=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return project(root, cache=cache)


def tree(root: Path) -> dict[str, float]:
    """Every path under ``root`` (symlinks not followed) and its modification time."""
    return {str(p.relative_to(root)): p.lstat().st_mtime for p in root.rglob("*")}


def start_stage(root: Path, tf_config: str | None) -> subprocess.Popen:
    """``python stages/train.py`` in ``root``, as DVC runs it, with ``tf_config`` as TF_CONFIG (or none)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "train.py")],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_workers_train_one_model_and_only_the_chief_writes(cache_dir, tmp_path, mlflow_store):
    chief_root, worker_root = (
        stage_project(tmp_path / "chief", cache_dir),
        stage_project(tmp_path / "worker", cache_dir),
    )
    before = tree(worker_root)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = [start_stage(root, cluster.tf_config(addresses, i)) for i, root in enumerate((chief_root, worker_root))]
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], "\n\n".join(log[-3000:] for log in logs)

    # the other worker wrote nothing into its project, and its temporary folder is gone
    assert tree(worker_root) == before
    scratch = re.search(r"worker 1 of a cluster of 2 \(not the chief\): checkpoints and records go to (\S+),", logs[1])
    assert scratch and not Path(scratch[1]).exists(), logs[1][-3000:]
    # one MLflow run, the chief's, over 2 replicas: the global batch is batch_size × 2
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id == read_json(chief_root / "models" / "run.json")["run_id"]
    assert runs[0].data.params["train.distribute"] == "multiworker"
    assert runs[0].data.params["resolved.replicas"] == "2" and runs[0].data.params["resolved.global_batch_size"] == "16"
    # both trained the same model: the same epochs, to the last digit
    best = [re.findall(r"best epoch .*", log) for log in logs]
    assert best[0] == best[1] and len(best[0]) == 1, best

    # the chief's outputs are the stage's: the model is the best epoch's, whose validation loss and
    # macro-F1 (each worker validating its share, gathered in order) the saved model gives again
    metrics = read_json(chief_root / paths.TRAIN_JSON)
    assert read_json(chief_root / paths.TRAIN_METRICS)["best_epoch"] == metrics["best_epoch"]
    history = pd.read_csv(chief_root / paths.HISTORY_CSV)
    assert list(history["epoch"]) == [0, 1] and (chief_root / paths.CURVES_PNG).stat().st_size > 1000
    model = keras.models.load_model(chief_root / "models" / "model.keras")
    x, y = np.load(cache_dir / "val_x.npy").astype(np.float32), np.load(cache_dir / "val_y.npy")
    probabilities = model.predict(x, verbose=0)
    loss = float(keras.losses.SparseCategoricalCrossentropy()(y, probabilities))
    assert loss == pytest.approx(metrics["best_val_loss"], rel=1e-3)
    f1 = macro_f1(confusion(y, probabilities.argmax(axis=1), probabilities.shape[1]))
    assert f1 == pytest.approx(metrics["best_val_macro_f1"], abs=1e-6)


REPLICAS = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from chestxray.config import HeadSettings
from chestxray.learn.models import build_model
from chestxray.learn.training import synchronize_batchnorm
x = np.random.default_rng(0).uniform(0, 255, (32, 32, 32, 1)).astype("float32")
y = np.arange(32) % 4

def step(strategy, sync):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model, _ = build_model("cnn", 32, 4, "none", {"filters": [8, 16]}, HeadSettings(dense=[], dropout=0.0))
        if sync:
            synchronize_batchnorm(model, strategy)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)  # one step, on the batch of 32
    return model.get_weights()  # trainable weights and BatchNorm moving statistics

one = step(tf.distribute.get_strategy(), sync=True)
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
differences = {sync: [float(np.abs(a - b).max()) for a, b in zip(one, step(two, sync))] for sync in (True, False)}
print(json.dumps({sync: max(d) for sync, d in differences.items()}))
"""


def test_a_step_over_two_replicas_is_the_step_of_one_process():
    """With several replicas (mirrored, multiworker), training synchronises the BatchNorm statistics:
    a step over two replicas of 16 images gives the weights and moving statistics one process gives
    with the batch of 32. Without it, each replica normalises with its 16 images' statistics and the
    step differs. (MirroredStrategy over two logical CPU devices: Keras runs the same code for both.)"""
    done = subprocess.run([sys.executable, "-c", REPLICAS], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    difference = json.loads(done.stdout.strip().splitlines()[-1])
    assert difference["true"] < 1e-5 and difference["false"] > 1e-3, difference


SHARES = """
import json, sys
import numpy as np
from chestxray.learn import devices
strategy = devices.strategy("multiworker")  # first, as TensorFlow requires
from chestxray.learn.inputs import make_dataset
x = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1).repeat(4, 1).repeat(4, 2)  # image i is all i
batches = strategy.experimental_distribute_dataset(make_dataset(x, np.zeros(100, np.int64), 16, True, 7))
seen = []
for epoch in range(2):  # as Keras' fit: one distributed dataset, iterated once per epoch
    for images, labels in batches:
        seen.append([int(v) for v in strategy.experimental_local_results(images)[0][:, 0, 0, 0]])
print(json.dumps(seen))
"""


def test_each_worker_sees_its_own_share_of_every_batch(tmp_path):
    """The training pipeline as Keras distributes it: per step, the workers' shares are disjoint and
    make up one global batch of the (shuffled) epoch; every image once per epoch."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SHARES],
            env={**os.environ, "TF_CONFIG": cluster.tf_config(addresses, i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        out = [p.communicate(timeout=TIMEOUT) for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], "\n\n".join(err[-3000:] for _, err in out)
    shares = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in out]
    assert len(shares[0]) == len(shares[1]) == 2 * 7  # ceil(100 / 16) steps per epoch, for both
    steps = [a + b for a, b in zip(*shares, strict=True)]
    assert all(not set(a) & set(b) for a, b in zip(*shares, strict=True))
    assert [len(step) for step in steps[:7]] == [16] * 6 + [4]  # global batches of 16, split 8 + 8
    epochs = [list(itertools.chain(*steps[:7])), list(itertools.chain(*steps[7:]))]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(100))
    assert epochs[0] != epochs[1] != list(range(100))  # shuffled, afresh each epoch


def test_the_stage_without_tf_config_fails_in_one_line_before_tensorflow_starts(cache_dir, tmp_path):
    root = stage_project(tmp_path / "p", cache_dir)
    before = tree(root)
    stage = start_stage(root, None)
    output = stage.communicate(timeout=TIMEOUT)[0]
    assert stage.returncode == 1
    assert (
        output.strip()
        .splitlines()[-1]
        .endswith(
            "ERROR train: TF_CONFIG is not set, but train.distribute is multiworker; set TF_CONFIG on every worker"
            f" to JSON like '{cluster.EXAMPLE}' (its own task index on each), start local workers with"
            " `python -m chestxray train-workers -n 2`, or set train.distribute to auto"
            " (see docs/training.md#gpus-and-more-machines)"
        )
    )
    assert "tensorflow" not in output.lower() and tree(root) == before


# Stand-ins for the launcher's tests (real processes, no TensorFlow, so they take seconds): the chief's
# command, and stages/train.py of a project folder. Each records its TF_CONFIG and pid in $OUT.
CHIEF = """
import json, os, socket, sys, time
from pathlib import Path
out, mode = Path(os.environ["OUT"]), sys.argv[1]
config = json.loads(os.environ["TF_CONFIG"])
(out / "0.json").write_text(os.environ["TF_CONFIG"])
(out / "0.pid").write_text(str(os.getpid()))
if mode == "no-training":
    sys.exit(0)
host, port = config["cluster"]["worker"][0].split(":")
server = socket.create_server((host, int(port)))  # what the chief's train stage does first
others = range(1, len(config["cluster"]["worker"]))
while not all((out / f"{i}.json").exists() for i in others):
    time.sleep(0.1)
if mode == "hang":
    time.sleep(600)
sys.exit(5 if mode == "fail" else 0)
"""
WORKER = """
import json, os, sys, time
from pathlib import Path
out, mode = Path(os.environ["OUT"]), os.environ["WORKER_MODE"]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
(out / f"{index}.pid").write_text(str(os.getpid()))
(out / f"{index}.json").write_text(os.environ["TF_CONFIG"])
if mode == "hang":
    time.sleep(600)
sys.exit(3 if mode == "fail" else 0)
"""


def launch(tmp_path: Path, chief_mode: str, worker_mode: str, n: int = 2) -> tuple[int, str, Path]:
    """``python -m chestxray train-workers -n N -- python chief.py MODE`` in a folder whose
    stages/train.py is the stand-in; (exit code, output, the folder the stand-ins recorded in)."""
    root, out = tmp_path / "project", tmp_path / "out"
    (root / "stages").mkdir(parents=True)
    out.mkdir()
    (root / "stages" / "train.py").write_text(WORKER)
    (tmp_path / "chief.py").write_text(CHIEF)
    command = [sys.executable, "-m", "chestxray", "train-workers", "-n", str(n), "--"]
    done = subprocess.run(
        [*command, sys.executable, str(tmp_path / "chief.py"), chief_mode],
        cwd=root,
        env={**os.environ, "OUT": str(out), "WORKER_MODE": worker_mode},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr, out


def gone(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return True
    return False


def test_the_launcher_gives_each_worker_its_tf_config_and_waits_for_all(tmp_path):
    code, output, out = launch(tmp_path, "ok", "ok", n=3)
    assert code == 0, output
    tasks = [cluster.read({"TF_CONFIG": (out / f"{i}.json").read_text()}) for i in range(3)]
    assert [(t.index, t.is_chief) for t in tasks] == [(0, True), (1, False), (2, False)]
    addresses = tasks[0].cluster["worker"]
    assert all(t.cluster == {"worker": addresses} for t in tasks) and len(set(addresses)) == 3
    assert all(a.startswith("127.0.0.1:") for a in addresses)
    assert f"worker 2 at {addresses[2]}: stages/train.py" in output


def test_a_failing_worker_stops_the_chief_and_gives_its_exit_code(tmp_path):
    code, output, out = launch(tmp_path, "hang", "fail")
    assert code == 3 and "worker 1 exited with 3; stopping the others" in output
    assert gone(out / "0.pid")


def test_a_failing_chief_stops_the_workers_and_gives_its_exit_code(tmp_path):
    code, output, out = launch(tmp_path, "fail", "hang")
    assert code == 5 and "worker 0 exited with 5; stopping the others" in output
    assert gone(out / "1.pid")


def test_a_command_that_trains_nothing_starts_no_worker(tmp_path):
    code, output, out = launch(tmp_path, "no-training", "fail")
    assert code == 0 and "no other worker started" in output
    assert sorted(p.name for p in out.iterdir()) == ["0.json", "0.pid"]


def test_the_launcher_runs_in_the_project_s_root_only(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "chestxray", "train-workers"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith("stages/train.py: not found; run train-workers from the project's root")
