"""The pipeline on a team's tracking server (docs/team.md): `mlflow server` on PostgreSQL with the
artifacts in an S3 bucket, all started for real on 127.0.0.1 (tests/services.py, the ``team`` fixture).
The project's commands get nothing but ``MLFLOW_TRACKING_URI=http://…``: runs, models and the registry
live on the server, the project gets no mlflow.db or mlartifacts, and predict, `mlflow models serve`
and the web page load the champion from it. A sweep queued with `dvc exp run --queue` and run by two
queue workers logs there too, and its compare stages, two of which may run at once, keep one
leaderboard and one champion.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import services
import yaml
from mlflow import MlflowClient
from project import environment, ran, sh

from chestxray import tracking
from chestxray.__main__ import free_ports
from conftest import LOOPBACK, Team

pytestmark = pytest.mark.integration

STAGES = {"check", "download", "validate", "eda", "split", "prepare", "train", "evaluate", "audit", "compare"}
CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
LOCAL_STORE = {"mlflow.db", "mlartifacts", "mlruns"}  # what a local MLflow store would leave in the project
QUICK, START, QUEUE = 120, 300, 1200  # seconds: a command, a server's start, the whole queued sweep
SEEDS = (1, 2, 3)


def local_stores(root: Path) -> list[Path]:
    """Every MLflow store file or folder under ``root`` (hidden folders, DVC's temp copies, included)."""
    return [p for p in root.rglob("*") if p.name in LOCAL_STORE]


def champion_predictions(team: Team, folder: Path) -> list[dict]:
    """What the run of ``chestxray@champion`` on the server logged for a test image of each of three classes
    (rows of evaluate's predictions.csv, downloaded into ``folder``: the path relative to the project, the
    probabilities, the class at the threshold)."""
    client = MlflowClient(team.tracking_uri)
    run_id = client.get_model_version_by_alias("chestxray", "champion").run_id
    table = pd.read_csv(client.download_artifacts(run_id, "evaluate/predictions.csv", str(folder)))
    return table.groupby("actual").head(1).head(3).to_dict("records")


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def call(url: str, body: dict | None = None) -> tuple[int, dict | str]:
    """GET ``url`` (no body) or POST ``body`` as JSON, never through a proxy; the status and the answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    try:
        with LOOPBACK.open(request, timeout=120) as response:
            status, text, kind = response.status, response.read().decode(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, text, kind = error.code, error.read().decode(), error.headers.get_content_type()
    return status, json.loads(text) if kind == "application/json" else text


def assert_champion_answers(rows: list[dict], answers: list[dict]) -> None:
    """Each answer gives the probabilities and the class at the threshold that evaluate logged for the image."""
    assert len(answers) == len(rows) > 0
    for row, answer in zip(rows, answers, strict=True):
        assert [answer[f"p_{c}"] for c in CLASSES] == pytest.approx([row[f"p_{c}"] for c in CLASSES], abs=1e-5)
        assert answer["predicted"] == row["predicted_at_threshold"]


def test_runs_models_and_the_registry_live_on_the_server(team: Team):
    """`dvc repro` with MLFLOW_TRACKING_URI=http://…: every stage ran, its runs are FINISHED on the server,
    the artifacts and the model's files are objects in the bucket, and the project has no local store."""
    assert set(ran(team.first_repro)) == STAGES
    client = MlflowClient(team.tracking_uri)
    experiment = client.get_experiment_by_name("chestxray").experiment_id
    evaluate = json.loads((team.root / "reports/evaluate.json").read_text())
    run = client.get_run(evaluate["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "train"
    assert run.data.metrics["test.macro_f1"] == pytest.approx(evaluate["macro_f1"])
    for stage in ("validate", "eda"):
        runs = client.search_runs([experiment], f"tags.stage = '{stage}'")
        assert runs and {r.info.status for r in runs} == {"FINISHED"}, stage
    prefix = f"mlflow/{experiment}/"
    keys = set(team.store.keys("team", prefix))
    assert {
        f"{prefix}{run.info.run_id}/artifacts/{name}" for name in ("evaluate/predictions.csv", "model_card.md")
    } <= keys
    [model] = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run.info.run_id}'")
    files = f"{prefix}models/{model.model_id}/artifacts/"
    assert {f"{files}MLmodel", f"{files}artifacts/settings.json", f"{files}artifacts/model.keras"} <= keys
    assert team.store.read("team", f"{files}artifacts/model.keras") == (team.root / "models/model.keras").read_bytes()
    compare = json.loads((team.root / "reports/compare.json").read_text())
    version = client.get_model_version_by_alias("chestxray", "champion")
    assert compare["champion"]["version"] == int(version.version) and version.run_id == compare["champion"]["run_id"]
    assert f"in {team.tracking_uri}," in (team.root / "reports/leaderboard.md").read_text()
    assert local_stores(team.root) == []


def test_predict_uses_the_champion_on_the_server(team: Team, tmp_path: Path):
    expected = champion_predictions(team, tmp_path)
    out = tmp_path / "out.json"
    paths = [row["path"] for row in expected]
    sh(team.root, "chestxray", "predict", *paths, "--format", "json", "--output", str(out), env=team.env, timeout=QUICK)
    answers = json.loads(out.read_text())
    assert [a["path"] for a in answers] == paths
    assert_champion_answers(expected, answers)
    assert local_stores(team.root) == []


def test_mlflow_models_serve_loads_the_champion_from_the_server(team: Team, tmp_path: Path):
    """`mlflow models serve -m models:/chestxray@champion --env-manager local`, given only the server's URL."""
    expected = champion_predictions(team, tmp_path)
    port = free_ports(1)[0]
    command = ["mlflow", "models", "serve", "-m", "models:/chestxray@champion", "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with services.server(command, f"{url}/ping", "mlflow models serve", log, environment(team.env), tmp_path, START):
        images = [[b64(team.root / row["path"])] for row in expected]
        status, body = call(f"{url}/invocations", {"dataframe_split": {"columns": ["image"], "data": images}})
    assert status == 200, body
    assert_champion_answers(expected, body["predictions"])


def test_the_web_page_serves_the_champion_from_the_server(team: Team, tmp_path: Path):
    """`chestxray app` in the project (its default model: the champion of params.yaml's registered model)."""
    expected = champion_predictions(team, tmp_path)
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "chestxray", "app", "--host", "127.0.0.1", "--port", str(port)]
    env = environment(team.env)
    with services.server(command, f"{url}/health", "chestxray app", tmp_path / "app.log", env, team.root, START):
        health = call(f"{url}/health")[1]
        page = call(f"{url}/")
        answers = [call(f"{url}/predict", {"image": b64(team.root / row["path"])}) for row in expected]
    assert health["model"]["uri"] == "models:/chestxray@champion" and health["model"]["classes"] == CLASSES
    assert page[0] == 200 and "<html" in page[1].lower()
    assert {status for status, _ in answers} == {200}, answers
    probabilities = [{f"p_{c}": p for c, p in body["probabilities"].items()} | body for _, body in answers]
    assert_champion_answers(expected, probabilities)


def compare_copy(team: Team, folder: Path, registered_model: str) -> Path:
    """What the compare stage reads of the team project, in ``folder``: its script, reports/evaluate.json
    (the data version) and params.yaml with ``compare.registered_model`` set to ``registered_model``."""
    for name in ("stages/compare.py", "reports/evaluate.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(team.root / name, folder / name)
    params = yaml.safe_load((team.root / "params.yaml").read_text())
    params["compare"]["registered_model"] = registered_model
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def compare_at_once(team: Team, folders: list[Path]) -> list[tuple[int, str]]:
    """`python stages/compare.py` (the stage's command) started in every folder at once; exit codes and outputs."""
    stages = [
        subprocess.Popen(
            [sys.executable, "stages/compare.py"],
            cwd=folder,
            env=environment(team.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for folder in folders
    ]
    outputs = [stage.communicate(timeout=QUICK)[0] for stage in stages]
    return [(stage.returncode, output) for stage, output in zip(stages, outputs, strict=True)]


def test_two_compares_at_once_move_the_champion_once(team: Team, tmp_path: Path):
    """Two compare stages at once on the server, for a registered model with no champion yet: one
    registers the best run and makes it champion, the other waits for it and finds it so. Without the
    lock both found no champion, and both said they moved it."""
    name = f"race-{secrets.token_hex(3)}"
    folders = [compare_copy(team, tmp_path / side, name) for side in ("a", "b")]
    outcomes = compare_at_once(team, folders)
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    champions = [json.loads((folder / "reports/compare.json").read_text())["champion"] for folder in folders]
    client = MlflowClient(team.tracking_uri)
    [version] = client.search_model_versions(f"name = '{name}'")
    assert client.get_registered_model(name).aliases == {"champion": version.version}
    assert sorted(c["moved"] for c in champions) == [False, True]
    assert {(c["version"], c["run_id"]) for c in champions} == {(int(version.version), version.run_id)}
    assert [m.name for m in client.search_registered_models(f"name = '{name}.lock'")] == []


def test_a_lock_left_by_a_dead_process_is_broken(team: Team, tmp_path: Path):
    """The lock of a compare killed mid-decision (its holder, a process of this host, is gone): the next
    compare breaks it, says so, and decides."""
    name = f"stale-{secrets.token_hex(3)}"
    holder = subprocess.Popen(["sleep", "60"])
    owner = {"owner.host": socket.gethostname(), "owner.pid": str(holder.pid)}
    owner["owner.pid_start"] = tracking._process_start(holder.pid)
    holder.kill()
    holder.wait(timeout=QUICK)
    client = MlflowClient(team.tracking_uri)
    client.create_registered_model(f"{name}.lock", tags=owner)
    [(code, output)] = compare_at_once(team, [compare_copy(team, tmp_path, name)])
    assert code == 0, output
    assert f"breaking the lock {name}.lock (held by process {holder.pid} on {socket.gethostname()}" in output
    assert json.loads((tmp_path / "reports/compare.json").read_text())["champion"]["moved"] is True
    assert [m.name for m in client.search_registered_models(f"name = '{name}.lock'")] == []


@pytest.fixture
def sweep_project(team: Team, tmp_path: Path) -> Iterator[Path]:
    """A copy of the reproduced team project (not its DVC temp folder) with everything committed, so
    queued experiments start from its results; its queue workers are stopped at the end."""
    root = tmp_path / "project"
    shutil.copytree(team.root, root, ignore=lambda folder, names: ["tmp"] if folder == str(team.root / ".dvc") else [])
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", timeout=QUICK)
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results", "--allow-empty")
    yield root
    sh(root, "dvc", "queue", "stop", "--kill", timeout=QUICK)


def start_queue(root: Path, env: dict[str, str], jobs: int, log: Path) -> str:
    """`dvc queue start -j <jobs>` with ``env``; its output. The workers it spawns outlive it and inherit its
    standard output: into the file ``log``, as a pipe would stay open (and the call wait) until they exit."""
    with log.open("w") as out:
        done = subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)],
            cwd=root,
            env=environment(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=QUICK,
        )
    output = log.read_text()
    assert done.returncode == 0, f"dvc queue start failed ({done.returncode}):\n{output}"
    return output


def wait_for_queue(root: Path, env: dict[str, str], timeout: float) -> str:
    """Poll `dvc queue status` until nothing is queued or running; its last output."""
    deadline = time.monotonic() + timeout
    while True:
        status = sh(root, "dvc", "queue", "status", env=env, timeout=QUICK)
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        assert time.monotonic() < deadline, f"the queue did not finish within {timeout:.0f} s:\n{status}"
        time.sleep(5)


def test_a_sweep_on_two_queue_workers_keeps_one_leaderboard_and_one_champion(
    team: Team, sweep_project: Path, tmp_path: Path
):
    """`dvc exp run --queue` of three training seeds (one epoch), then `dvc queue start -j 2` with the
    server's URL in the environment (the workers it spawns inherit it). Two experiments run at once, so
    two compare stages may too. Their own MLflow experiment and registered model (so the leaderboard
    holds exactly these runs, and the champion starts empty): three FINISHED runs on the server, the
    last compare lists all three, one version per registered run, one `champion` alias, moved from
    nothing exactly once, and where the last compare says."""
    name = f"sweep-{secrets.token_hex(3)}"
    env = {**team.env, "MLFLOW_EXPERIMENT_NAME": name}
    settings = ["-S", "train.seed=" + ",".join(map(str, SEEDS)), "-S", "train.epochs=1"]
    settings += ["-S", f"compare.registered_model={name}"]
    sh(sweep_project, "dvc", "exp", "run", "--queue", *settings, env=env, timeout=QUICK)
    assert "Started '2' new experiments task queue workers" in start_queue(
        sweep_project, env, 2, tmp_path / "start.log"
    )
    status = wait_for_queue(sweep_project, env, QUEUE)
    assert "Failed" not in status and status.count("Success") == len(SEEDS), status

    shown = json.loads(sh(sweep_project, "dvc", "exp", "show", "--json", timeout=QUICK))
    exps = [exp for baseline in shown for exp in baseline.get("experiments") or []]
    assert len(exps) == len(SEEDS)
    client = MlflowClient(team.tracking_uri)
    experiment = client.get_experiment_by_name(name).experiment_id
    runs = client.search_runs([experiment], "tags.stage = 'train'")
    assert sorted(int(r.data.params["train.seed"]) for r in runs) == list(SEEDS)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == sorted(exp["name"] for exp in exps)
    run_ids = {r.info.run_id for r in runs}

    records = sorted(  # each experiment's compare record, in the order the experiments finished
        (exp["revs"][0]["data"]["timestamp"], exp["revs"][0]["data"]["rev"]) for exp in exps
    )
    compares = [json.loads(sh(sweep_project, "git", "show", f"{rev}:reports/compare.json")) for _, rev in records]
    last = compares[-1]
    assert {row["run_id"] for row in last["leaderboard"]} == run_ids and last["n_runs"] == len(SEEDS)
    board = sh(sweep_project, "git", "show", f"{records[-1][1]}:reports/leaderboard.md")
    assert all(run_id in board for run_id in run_ids)

    # a training-seed sweep keeps the data version, and the leaderboard groups its runs: mean ± sd
    split = json.loads((sweep_project / "reports/split.json").read_text())["data_version"]
    assert {e["revs"][0]["data"]["metrics"]["metrics/evaluate.json"]["data"]["data_version"] for e in exps} == {split}
    [group] = [g for g in last["seed_groups"] if set(g["runs"]) == run_ids]
    val = [r.data.metrics["val.macro_f1"] for r in runs]  # evaluate logs into the training run
    assert group["n"] == len(SEEDS)
    assert group["validation"]["mean"] == pytest.approx(np.mean(val), abs=1e-6)
    assert group["validation"]["sd"] == pytest.approx(np.std(val, ddof=1), abs=1e-6)

    versions = client.search_model_versions(f"name = '{name}'")
    assert len({v.run_id for v in versions}) == len(versions)  # no run registered twice
    assert client.get_registered_model(name).aliases == {"champion": str(last["champion"]["version"])}
    firsts = [c for c in compares if c["champion"]["moved"] and c["champion"]["reason"].startswith("no champion yet")]
    assert len(firsts) == 1, [c["champion"] for c in compares]
    assert local_stores(sweep_project) == []
