"""The whole pipeline as users run it: dvc repro, dvc exp run -S model=…, a queued sweep, MLflow.

Runs the real `dvc` in a temporary copy of the repository (a fresh git repo) on the default
params (the embedded synthetic dataset); every stage runs as a subprocess exactly as users run it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from project import clean_copy, environment, ran, run, set_params, sh

from chestxray.config import flatten
from chestxray.learn.backbones import BACKBONES
from chestxray.records import HEADLINES
from chestxray.serve import serving
from conftest import CHROMIUM_ARGS, REPO
from kaggle_server import SLUG, USER, KaggleStub

pytestmark = pytest.mark.integration

CHAIN = ["check", "download", "validate", "split", "prepare", "train", "evaluate", "audit", "compare"]
STAGES = {*CHAIN, "eda"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clean_copy(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def first_repro(repo: Path) -> str:
    return sh(repo, "dvc", "repro")


def metrics(repo: Path, name: str) -> dict:
    """A stage's full record, ``reports/<name>.json`` (``metrics/<name>.json`` is its headline)."""
    return json.loads((repo / "reports" / f"{name}.json").read_text())


def in_order(output: str) -> bool:
    """Whether ``output`` ran every stage: the chain in order, and eda after validate."""
    order = ran(output)
    return [s for s in order if s != "eda"] == CHAIN and "eda" in order and order.index("eda") > order.index("validate")


def test_repro_runs_the_chain_and_learns(repo, first_repro):
    assert in_order(first_repro)
    dag = sh(repo, "dvc", "dag", "--md")
    names = dict(re.findall(r'(node\d+)\["(\w+)"\]', dag))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", dag)}
    chain = set(itertools.pairwise(CHAIN))
    assert chain <= edges
    assert {("check", stage) for stage in STAGES - {"check"}} <= edges  # every stage waits for the check
    edges -= {("check", stage) for stage in STAGES}
    # eda reads the manifest and the grid images; prepare decodes the images the split names;
    # evaluate reads the test split; train logs the data stages' records to MLflow as provenance;
    # audit reads the manifest, the split, the cache, the model and the records for the model card;
    # compare reads evaluate.json
    assert edges - chain == {
        ("validate", "eda"),
        ("download", "eda"),
        ("download", "prepare"),
        ("prepare", "evaluate"),
        ("download", "train"),
        ("validate", "train"),
        ("validate", "audit"),
        ("split", "audit"),
        ("prepare", "audit"),
        ("train", "audit"),
        ("download", "audit"),
        ("evaluate", "compare"),
    }
    validate, split, evaluate = metrics(repo, "validate"), metrics(repo, "split"), metrics(repo, "evaluate")
    assert (
        validate["raw"]
        == validate["clean"]
        == {"COVID": 171, "Lung_Opacity": 284, "Normal": 482, "Viral Pneumonia": 63}
    )
    assert validate["rejected"] == {} and validate["gate"]["passed"] is True
    assert validate["duplicates"] == {"exact_groups": 0, "near_groups": 0, "grouped_images": 0}
    assert validate["expectations"] == {"evaluated": 13, "failed": 0}
    assert {s: sum(c.values()) for s, c in split["counts"].items()} == {"train": 698, "val": 151, "test": 151}
    assert split["groups"] == 1000 and split["leakage"] == {"exact_pairs": 0, "near_pairs": 0}
    for page in ("validation/index.html", "eda/index.html", "eda/grid_viral_pneumonia.png"):
        assert (repo / "reports" / page).stat().st_size > 1000
    assert evaluate["n"] == sum(split["counts"]["test"].values())
    assert evaluate["macro_f1"] > 0.6, evaluate  # chance is 0.25 for four classes
    assert set(evaluate["per_class"]) == {"COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"}
    assert evaluate["ci"]["macro_f1"]["low"] <= evaluate["macro_f1"] <= evaluate["ci"]["macro_f1"]["high"]
    assert evaluate["operating_point"]["val_sensitivity"] >= evaluate["operating_point"]["target_sensitivity"] == 0.95
    compare = metrics(repo, "compare")
    assert compare["n_runs"] == 1 and compare["best"]["run_id"] == evaluate["run_id"]
    assert compare["champion"]["run_id"] == evaluate["run_id"] and compare["champion"]["moved"] is True
    assert compare["mcnemar"] is None  # one run
    for png in (
        "train/curves.png",
        "evaluate/confusion.png",
        "evaluate/roc.png",
        "evaluate/pr.png",
        "evaluate/reliability.png",
        "gradcam/COVID.png",
        "leaderboard.png",
    ):
        assert (repo / "reports" / png).stat().st_size > 5000, png
    assert evaluate["data_version"] in (repo / "reports" / "model_card.md").read_text()


def test_second_repro_runs_nothing(repo, first_repro):
    assert ran(sh(repo, "dvc", "repro")) == []


@pytest.mark.parametrize(
    ("module", "stages"),
    [
        ("judge/leaderboard.py", {"compare"}),
        ("data/layouts/csv_table.py", {"check", "validate", "audit"}),  # a layout adapter: no new download
        ("data/radiography.py", {"check", "download", "validate", "audit"}),  # the synthetic data's layout
        ("learn/backbones.py", {"check", "train", "evaluate", "audit"}),
        ("figures.py", {"eda", "train", "evaluate", "audit", "compare"}),
        ("config.py", STAGES),
    ],
)
def test_an_edit_reruns_exactly_the_stages_that_run_the_code(repo, first_repro, module, stages):
    """A real DVC answer: after editing one module, `dvc status` names the stages whose hashes changed."""
    path = repo / "src" / "chestxray" / module
    original = path.read_bytes()
    path.write_bytes(original + b"\n# edited\n")
    try:
        changed = set(json.loads(sh(repo, "dvc", "status", "--json")))
    finally:
        path.write_bytes(original)
    assert changed == stages


def locked_params(repo: Path, stage: str) -> dict[str, str]:
    """The params DVC tracked for ``stage`` in dvc.lock, flattened and as MLflow stores them (text)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage].get("params", {})
    tracked = flatten(lock.get("params.yaml", {}))
    # a section seed left null is the top-level seed: the run logs the seed it used
    resolved = {k: tracked["seed"] for k, v in tracked.items() if k.endswith(".seed") and v is None}
    return {k: str(v) for k, v in {**tracked, **resolved}.items()}


def test_mlflow_has_the_run_with_params_metrics_model(repo, first_repro, monkeypatch):
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("chestxray").experiment_id
    [validate] = client.search_runs([experiment], "tags.stage = 'validate'")
    assert validate.data.metrics["clean.Normal"] == metrics(repo, "validate")["clean"]["Normal"]
    assert "validation/index.html" in {a.path for a in client.list_artifacts(validate.info.run_id, "validation")}
    [eda] = client.search_runs([experiment], "tags.stage = 'eda'")
    assert "eda/index.html" in {a.path for a in client.list_artifacts(eda.info.run_id, "eda")}
    [run] = client.search_runs([experiment], "tags.stage = 'train'")
    assert run.info.run_id == metrics(repo, "evaluate")["run_id"]
    # each run holds exactly the params its stage reads, as DVC tracked them
    assert validate.data.params == locked_params(repo, "validate") and eda.data.params == locked_params(repo, "eda")
    train_params = {k: v for k, v in run.data.params.items() if not k.startswith("resolved.")}
    assert train_params == locked_params(repo, "train") and run.data.params["model"] == "cnn"
    evaluate_tags = {k: v for k, v in run.data.tags.items() if k.startswith("evaluate.")}
    assert {**evaluate_tags, "seed": run.data.params["seed"]} == locked_params(repo, "evaluate")
    assert run.data.tags["data.image_size"] == "64" and run.data.tags["data.task"] == "4class"
    assert run.data.metrics["test.macro_f1"] == pytest.approx(metrics(repo, "evaluate")["macro_f1"])
    assert run.data.tags["data_version"] == metrics(repo, "split")["data_version"]
    assert run.data.tags["mlflow.source.git.commit"] == sh(repo, "git", "rev-parse", "HEAD").strip()
    audit = metrics(repo, "audit")  # the audit stage's numbers and settings, on the same run
    assert run.data.metrics["audit.occluded.macro_f1"] == pytest.approx(audit["audit"]["occluded"]["macro_f1"])
    audit_tags = {k: v for k, v in run.data.tags.items() if k.startswith("audit.")}
    assert audit_tags == {k: v for k, v in locked_params(repo, "audit").items() if k.startswith("audit.")}
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "audit",
        "data",
        "evaluate",
        "gradcam",
        "model_card.md",
        "train",
    }
    assert run.data.tags["data.source"] == "synthetic" and "data.slug" not in run.data.tags
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.models.get_model_info("models:/chestxray@champion")  # the pyfunc model evaluate logged
    assert model.run_id == run.info.run_id and "python_function" in model.flavors
    assert model.signature.inputs.input_names() == ["image"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    served = serving.load("models:/chestxray@champion")
    assert (served.image_size, served.classes) == (64, ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"])
    assert served.threshold == metrics(repo, "evaluate")["operating_point"]["threshold"]
    assert (repo / "mlartifacts").is_dir() and not (repo / "mlruns").exists()


def test_predict_uses_the_champion(repo, first_repro, tmp_path):
    """Before any experiment changes the workspace: the champion is the model of the last repro,
    and predict gives what evaluate saw for the same test image."""
    [expected] = pd.read_csv(repo / "reports" / "evaluate" / "predictions.csv").head(1).to_dict("records")
    sh(
        repo,
        "python",
        "-m",
        "chestxray",
        "predict",
        expected["path"],
        "--format",
        "json",
        "--output",
        str(tmp_path / "out.json"),
    )
    [row] = json.loads((tmp_path / "out.json").read_text())
    classes = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert set(row) == {"path", *(f"p_{c}" for c in classes), "predicted", "trained_on", "warning"}
    assert row["path"] == expected["path"] and row["warning"] == "synthetic data: not meaningful on real X-rays"
    assert [row[f"p_{c}"] for c in classes] == pytest.approx([expected[f"p_{c}"] for c in classes], abs=1e-5)
    assert row["predicted"] == expected["predicted_at_threshold"]


def model_weights(repo: Path) -> list:
    import keras

    import chestxray.learn.models  # noqa: F401  (registers the custom layer and loss)

    return keras.models.load_model(repo / "models" / "model.keras", compile=False).get_weights()


def test_kill_9_mid_train_then_rerun_gives_the_same_model_and_a_true_mlflow(repo, first_repro, tmp_path):
    """`kill -9` of `dvc repro` and its stage mid-train (no handler runs), then `dvc repro` again:
    the same weights and metrics as the uninterrupted run, the killed run KILLED in MLflow (ended by
    the next stage that opens the store), no temp folder left, and git sees only the outputs.
    In a copy of the reproduced project with an empty MLflow store, where `dvc repro --force
    --single-item train` retrains (the data stages stay done)."""
    project = tmp_path / "project"
    leave_out = {repo: {"mlflow.db", "mlartifacts"}, repo / ".dvc": {"tmp"}}  # the store; DVC's locks and queue
    shutil.copytree(repo, project, ignore=lambda folder, names: leave_out.get(Path(folder), set()) & set(names))
    env = environment()
    history = project / "reports" / "train" / "history.csv"
    finished = history.read_text()  # the copy's, until train starts again
    proc = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "train"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def two_new_epochs() -> bool:
        text = history.read_text() if history.exists() else ""
        return text != finished and len(text.splitlines()) >= 3

    deadline = time.time() + 600
    while not two_new_epochs() and time.time() < deadline:
        assert proc.poll() is None, "dvc repro ended before training was under way"
        time.sleep(0.5)
    assert list(project.glob(".models.tmp-*")), "train should be writing its model folder"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("chestxray").experiment_id
    [killed] = client.search_runs([experiment], "tags.stage = 'train'")
    assert killed.info.status == "RUNNING"  # SIGKILL: nothing could end it

    output = sh(project, "dvc", "repro")
    assert ran(output) == ["train", "evaluate", "audit", "compare"]
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert client.get_run(killed.info.run_id).info.end_time is not None
    for a, b in zip(model_weights(project), model_weights(repo), strict=True):
        assert np.array_equal(a, b)
    drop = {"train": {"train_seconds"}, "evaluate": {"run_id"}}
    for name, ignored in drop.items():
        fresh, reference = metrics(project, name), metrics(repo, name)
        assert {k: v for k, v in fresh.items() if k not in ignored} == {
            k: v for k, v in reference.items() if k not in ignored
        }, name
    leftovers = [p for p in project.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert [p for p in leftovers if ".dvc" not in p.relative_to(project).parts] == []
    assert sh(project, "git", "status", "--porcelain") == sh(repo, "git", "status", "--porcelain")


def test_exp_run_with_another_model_reruns_only_train_evaluate_compare(repo, first_repro):
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline results")
    output = sh(
        repo, "dvc", "exp", "run", "-S", "model=mobilenetv2", "-S", "train.epochs=2", "-S", "train.imbalance=focal"
    )
    assert ran(output) == ["check", "train", "evaluate", "audit", "compare"]
    assert json.loads((repo / "models" / "run.json").read_text())["model"] == "mobilenetv2"
    compare = metrics(repo, "compare")
    assert compare["n_runs"] == 2 and compare["mcnemar"]["n"] == metrics(repo, "evaluate")["n"]
    assert compare["champion"]["version"] == 1 and compare["champion"]["moved"] is False  # two epochs do not beat it
    history = (repo / "reports" / "train" / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss,val_macro_f1" and len(history) == 3


def test_exp_run_with_other_evaluate_settings_reevaluates_and_the_run_says_so(repo, first_repro):
    """Only evaluate and compare run again, on the same training run; its evaluate.* tags (MLflow
    params cannot change) now hold the new settings, and its metrics the new intervals."""
    output = sh(repo, "dvc", "exp", "run", "-S", "evaluate.bootstrap=2000", "-S", "evaluate.target_sensitivity=0.9")
    assert ran(output) == ["check", "evaluate", "audit", "compare"]
    evaluate = metrics(repo, "evaluate")
    assert evaluate["operating_point"]["target_sensitivity"] == 0.9
    run = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(evaluate["run_id"])
    assert run.data.tags["evaluate.bootstrap"] == "2000" and run.data.tags["evaluate.target_sensitivity"] == "0.9"
    assert run.data.metrics["test.ci.macro_f1.low"] == evaluate["ci"]["macro_f1"]["low"]


def outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file of the project but git's, DVC's internals and params.yaml: the outputs
    of every stage (cached or not), dvc.lock, the MLflow store."""
    skip = (".git/", ".dvc/", "params.yaml")
    return {
        p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and not p.relative_to(repo).as_posix().startswith(skip)
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train.epochs": -1}, "train.epochs must be greater than or equal to 1, got -1"),
        ({"data.source": "ftp"}, "data.source must be one of 'synthetic', 'kaggle' or 'local', got 'ftp'"),
        ({"seed": "abc"}, "seed must be a valid integer, got 'abc'"),
        ({"model": "alexnet"}, "model must be one of " + ", ".join(BACKBONES) + ", got 'alexnet'"),
        ({"train.epoch": 3}, "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
        ({"data.image_size": 100_000}, "data.image_size must be less than or equal to 1024, got 100000"),
        ({"train.batch_size": 10**9}, "train.batch_size must be less than or equal to 4096, got 1000000000"),
        (
            {"data.synthetic.n_images": 10**9},
            "data.synthetic.n_images must be less than or equal to 100000, got 1000000000",
        ),
        ({"evaluate.bootstrap": 10**12}, "evaluate.bootstrap must be less than or equal to 100000, got 1000000000000"),
        (
            {"evaluate.target_sensitivity": 1.5},
            "evaluate.target_sensitivity must be less than or equal to 1, got 1.5",
        ),
        (
            {"data.source": "kaggle", "data.kaggle.dataset": "covid19-radiography-database"},
            "data.kaggle.dataset: 'covid19-radiography-database' is not 'owner/slug' or 'owner/slug/<version>' as in"
            " the dataset's URL",
        ),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_a_bad_value_stops_repro_in_one_line_before_any_output_is_touched(repo, first_repro, values, message):
    """DVC deletes a stage's outputs before it runs it: the check stage, which every stage depends
    on, refuses first. Every output, dvc.lock and the MLflow store stay byte-identical, and with
    params.yaml put back nothing is left to re-run."""
    before = outputs(repo)
    params = repo / "params.yaml"
    original = params.read_text()
    set_params(params, values)
    try:
        code, output = run(repo, "dvc", "repro")
    finally:
        params.write_text(original)
    errors = [line.split(" ERROR ", 1)[1] for line in output.splitlines() if " ERROR " in line]
    assert code != 0 and ran(output) == ["check"] and "Traceback" not in output
    assert errors == [f"check: {message}" if message.startswith("data.kaggle") else f"check: params.yaml: {message}"], (
        output
    )
    assert outputs(repo) == before
    assert json.loads(sh(repo, "dvc", "status", "--json")) == {}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.epochs=-1", "check: params.yaml: train.epochs must be greater than or equal to 1, got -1"),
        ("+train.epoch=3", "check: params.yaml: unknown key 'train.epoch'; did you mean 'train.epochs'?"),
        ("train.epoch=3", "Could not override 'train.epoch'"),  # DVC's own refusal of an unknown key
        # train tracks backbones.${model}: DVC's "Parameters 'backbones.alexnet' are missing" would come
        # from train, which DVC reaches only after the check stage passed
        ("model=alexnet", "check: params.yaml: model must be one of " + ", ".join(BACKBONES) + ", got 'alexnet'"),
    ],
)
def test_a_bad_value_in_an_experiment_is_refused_the_same_way(repo, first_repro, setting, message):
    before = outputs(repo)
    code, output = run(repo, "dvc", "exp", "run", "-S", setting)
    assert code != 0 and ran(output) == ([] if setting == "train.epoch=3" else ["check"])
    assert message in output and "Traceback" not in output
    sh(repo, "git", "checkout", "params.yaml")
    assert outputs(repo) == before


def run_queue(repo: Path, *settings: str) -> list[dict]:
    """Queue ``dvc exp run --queue -S …`` and run it; the experiments' data of ``dvc exp show``."""
    sh(repo, "dvc", "exp", "run", "--queue", *itertools.chain.from_iterable(("-S", s) for s in settings))
    sh(repo, "dvc", "queue", "start", "--jobs", "1")
    deadline = time.time() + 900
    while time.time() < deadline:
        status = sh(repo, "dvc", "queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    assert "Failed" not in status, status
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    return [exp["revs"][0]["data"] for baseline in shown for exp in (baseline.get("experiments") or [])]


# The README's table of a sweep: backbone, data version, macro-F1 with its CI, COVID sensitivity and
# specificity at the served operating point
EXP_TABLE = tuple(  # the README's own line, so the recipe it shows is the one measured here
    shlex.split(re.search(r"^dvc exp show (--drop .*)$", (REPO / "README.md").read_text(encoding="utf-8"), re.M)[1])
)
EXP_COLUMNS = ["ci.macro_f1.high", "ci.macro_f1.low", "data_version", "macro_f1", "operating_point.sensitivity"]
EXP_COLUMNS += ["operating_point.specificity", "model"]


def table(output: str, first: str) -> list[str]:
    """The lines of the table in ``output`` from its header line (starting with ``first``) to its last row."""
    lines = [line for line in output.splitlines() if line.strip() and not line.strip().startswith("─")]
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first])
    return lines[start:]


def test_queued_sweep_runs_each_experiment_and_logs_to_the_real_store(repo, first_repro, monkeypatch):
    # on a baseline of its own (the workspace the tests above left), so that dvc exp show lists the
    # default and the sweep's two experiments, as after a user's first sweep
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "before the sweep", "--allow-empty")
    shown = run_queue(repo, "model=cnn,vgg16", "train.epochs=1")
    experiments = [e for e in shown if e["params"]["params.yaml"]["data"]["train"]["epochs"] == 1]
    assert sorted(e["params"]["params.yaml"]["data"]["model"] for e in experiments) == ["cnn", "vgg16"]
    for e in experiments:
        assert 0 <= e["metrics"]["metrics/evaluate.json"]["data"]["macro_f1"] <= 1
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("chestxray").experiment_id])
    queued = [r for r in runs if r.data.params.get("train.epochs") == "1"]
    assert sorted(r.data.tags["model"] for r in queued) == ["cnn", "vgg16"]
    assert all(r.data.tags["dvc_exp_name"] for r in queued)
    named = ("model", "data_version", "dvc_exp_name")  # e.g. vgg16-4bdd84e5c77a-brisk-lamb
    assert all(r.info.run_name == "-".join(r.data.tags[k] for k in named) for r in queued)
    assert all("test.macro_f1" in r.data.metrics for r in queued)
    monkeypatch.setenv("COLUMNS", "160")  # a 160-column terminal
    rows = table(sh(repo, "dvc", "exp", "show", *EXP_TABLE), "Experiment")
    assert max(map(len, rows)) <= 160 and "…" not in "".join(rows), "\n".join(rows)  # nothing cut or folded
    assert rows[0].split() == ["Experiment", *EXP_COLUMNS]
    for e in experiments:
        [row] = [line for line in rows if e["rev"][:7] in line]
        m = e["metrics"]["metrics/evaluate.json"]["data"]
        values = [m["ci"]["macro_f1"]["high"], m["ci"]["macro_f1"]["low"], m["data_version"], m["macro_f1"]]
        values += [m["operating_point"]["sensitivity"], m["operating_point"]["specificity"]]
        cells = [f"{v:.5g}" if isinstance(v, float) else str(v) for v in values]  # dvc's 5 significant digits
        assert row.split()[3:] == [*cells, e["params"]["params.yaml"]["data"]["model"]], row
    # dvc metrics show: the headlines only (the records are not DVC metrics)
    header = table(sh(repo, "dvc", "metrics", "show"), "Path")[0].split()
    assert header == ["Path", *sorted(key for keys in HEADLINES.values() for key in keys)]


def test_the_lungs_removed_experiment_keeps_the_data_version_and_never_takes_the_champion(repo, first_repro):
    """`dvc exp run -S data.occlude=0.6`: prepare blacks out the centre of every image, train,
    evaluate, audit and compare run again on the same split; the run is a border-only audit run,
    ranked on the leaderboard, never champion, and the champion's card in MLflow now quotes it."""
    store = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    before = client.get_model_version_by_alias("chestxray", "champion")
    output = sh(repo, "dvc", "exp", "run", "-S", "data.occlude=0.6")
    assert ran(output) == ["check", "prepare", "train", "evaluate", "audit", "compare"]
    evaluate, audit, compare = metrics(repo, "evaluate"), metrics(repo, "audit"), metrics(repo, "compare")
    assert evaluate["data_version"] == metrics(repo, "split")["data_version"] == before.tags["data_version"]
    assert audit["audit_run"] is True and audit["data_occlude"] == 0.6 and audit["run_id"] == evaluate["run_id"]
    run = client.get_run(evaluate["run_id"])
    assert run.data.tags["audit"] == "border-only" and run.data.tags["data.occlude"] == "0.6"
    assert evaluate["run_id"] in compare["audit_runs"] and compare["best"]["run_id"] != evaluate["run_id"]
    assert compare["champion"]["run_id"] == before.run_id and compare["champion"]["moved"] is False
    assert client.get_model_version_by_alias("chestxray", "champion").version == before.version
    assert "**This is an audit run.**" in (repo / "reports" / "model_card.md").read_text()
    card = Path(client.download_artifacts(before.run_id, "model_card.md", str(repo / ".dvc" / "tmp"))).read_text()
    assert f"audit run `{run.info.run_name}`" in card
    assert f"scores test macro-F1 **{evaluate['macro_f1']:.3f}**" in card
    sh(repo, "git", "checkout", "params.yaml")  # the next experiments start from the baseline's params


def test_a_run_on_other_data_leaves_the_champion_until_promoted(repo, first_repro):
    """The reported case: a run on another data version took the alias whatever its score. Now
    `dvc exp run -S split.seed=7` (other data) leaves the champion where it was, compare.json says
    why and how to move it, and `python -m chestxray promote` does."""
    store = f"sqlite:///{repo / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    before = mlflow.MlflowClient(store).get_model_version_by_alias("chestxray", "champion")
    sh(repo, "dvc", "exp", "run", "-S", "split.seed=7", "-S", "train.epochs=2")
    summary = metrics(repo, "compare")
    assert summary["data_version"] != before.tags["data_version"]
    champion = summary["champion"]
    assert champion["run_id"] == before.run_id and champion["moved"] is False
    run_id = summary["best"]["run_id"]
    assert f"python -m chestxray promote {run_id}" in champion["reason"]
    client = mlflow.MlflowClient(store)
    assert client.get_model_version_by_alias("chestxray", "champion").version == before.version
    sh(repo, "python", "-m", "chestxray", "promote", run_id)
    after = client.get_model_version_by_alias("chestxray", "champion")
    assert after.run_id == run_id and after.tags["data_version"] == summary["data_version"]
    assert after.tags["data.source"] == "synthetic"


def test_exp_run_on_kaggle_downloads_with_the_real_client_and_runs_everything(tmp_path, radiography_zip, monkeypatch):
    """`dvc exp run -S data.source=kaggle -S data.task=3class`, the real kaggle client talking to
    a Kaggle stand-in on 127.0.0.1 (Kaggle is unreachable here) serving the real Radiography sample."""
    project = clean_copy(tmp_path / "project")
    archive, key = radiography_zip, secrets.token_hex(16)  # a key written nowhere in the project
    with KaggleStub({SLUG: archive}, USER, key) as stub:
        monkeypatch.setenv("KAGGLE_API_ENDPOINT", stub.url)
        monkeypatch.setenv("KAGGLE_USERNAME", USER)
        monkeypatch.setenv("KAGGLE_KEY", key)
        output = sh(
            project, "dvc", "exp", "run", "-S", "data.source=kaggle", "-S", "data.task=3class", "-S", "train.epochs=3"
        )
    assert in_order(output)
    download, validate = metrics(project, "download"), metrics(project, "validate")
    assert download["slug"] == SLUG and download["version"] == stub.version
    assert download["sha256"] == hashlib.sha256(archive).hexdigest() and download["size"] == len(archive)
    assert validate["clean"] == {"COVID": 30, "Normal": 30, "Viral Pneumonia": 22}
    assert validate["task"]["excluded"] == {"Lung_Opacity": 29}
    assert sorted(metrics(project, "evaluate")["per_class"]) == ["COVID", "Normal", "Viral Pneumonia"]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("chestxray").experiment_id], "tags.stage = 'train'")
    assert run.data.tags["data.slug"] == SLUG and run.data.tags["data.sha256"] == download["sha256"]
    assert run.data.tags["data.version"] == str(stub.version) and run.data.tags["data.task"] == "3class"
    logged = Path(client.download_artifacts(run.info.run_id, "data/validate.json", str(tmp_path)))
    assert json.loads(logged.read_text())["task"]["mapping"]["Lung_Opacity"] is None
    assert key not in output
    for path in project.rglob("*"):  # the key is in no log, param, artifact, cache or store
        assert not path.is_file() or key.encode() not in path.read_bytes(), path


CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]  # as dvc-render names the per-class plots' divs
VEGA_PLOTS = {
    "Training_curves__loss_",
    "Training_curves__accuracy_",
    "Confusion_matrix__test_",
    "Reliability_diagram__test_",
    *(f"reports_evaluate_{curve}_{c}_csv" for curve in ("roc", "pr") for c in CLASSES),
}
IMAGES = 5  # curves, confusion, roc, pr and reliability PNGs, per revision


def drawn_offline(page: Path, chromium: Path, screenshot: Path) -> dict:
    """Open the `dvc plots` page ``page`` in Chromium with every request but file:// aborted.
    Returns, per Vega plot (dvc-render's div id), the revisions in its data and the data marks it drew
    (lines, and rects for the confusion matrix), each image's revision title and naturalWidth, the
    aborted requests and the script errors."""
    from playwright.sync_api import sync_playwright

    html = page.read_text()
    specs = {
        div: {value["rev"] for value in json.loads(spec)["data"]["values"]}
        for spec, div in re.findall(r"var spec = (.*?);\s*vegaEmbed\('#([^']+)'", html, re.S)
    }
    aborted, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            tab.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
            tab.on("requestfailed", lambda request: aborted.append(request.url))
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.goto(page.as_uri())
            tab.wait_for_function(  # without vega-embed nothing will draw: the assertions say what is missing
                "ids => typeof vegaEmbed === 'undefined'"
                " || ids.every(id => document.querySelector(`#${id} svg g.role-mark`))",
                arg=list(specs),
            )
            marks = tab.evaluate(
                """ids => Object.fromEntries(ids.map(id => [id, [
                    document.querySelectorAll(`#${id} svg g.mark-line.role-mark > path[d]`).length,
                    document.querySelectorAll(`#${id} svg g.mark-rect.role-mark > path[d]`).length]]))""",
                list(specs),
            )
            images = tab.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.previousElementSibling.textContent, i.complete && i.naturalWidth])"
            )
            tab.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    plots = {div: {"revs": revs, "lines": marks[div][0], "rects": marks[div][1]} for div, revs in specs.items()}
    return {"plots": plots, "images": images, "aborted": aborted, "errors": errors}


@pytest.mark.browser
def test_plots_show_and_diff_draw_every_plot_offline(repo, first_repro, chromium, tmp_path):
    """`dvc plots show`, then the README's `dvc plots diff HEAD <exp> <exp>` after the experiments above:
    with the page the compare stage wrote (.dvc/config plots.html_template), every Vega plot draws and
    every image loads in a browser that can reach nothing but files; git ignores the page and the template."""
    sh(repo, "dvc", "plots", "show")
    page = repo / "dvc_plots" / "index.html"
    shown = drawn_offline(page, chromium, tmp_path / "show.png")
    assert shown["aborted"] == [] and shown["errors"] == []
    assert set(shown["plots"]) == VEGA_PLOTS
    for div, plot in shown["plots"].items():
        assert plot["revs"] == {"workspace"} and plot["lines"] + plot["rects"] > 0, (div, plot)
    assert [(title, width > 0) for title, width in shown["images"]] == [("workspace", True)] * IMAGES
    assert shown["plots"]["reports_evaluate_roc_COVID_csv"]["lines"] == 1
    assert shown["plots"]["Confusion_matrix__test_"]["rects"] >= len(CLASSES) ** 2

    names = sh(repo, "dvc", "exp", "list", "--name-only").split()
    assert len(names) >= 2, names  # the experiments of the tests above
    revs = {"HEAD", *names[:2]}
    sh(repo, "dvc", "plots", "diff", "HEAD", *names[:2])
    compared = drawn_offline(page, chromium, tmp_path / "diff.png")
    assert compared["aborted"] == [] and compared["errors"] == []
    assert set(compared["plots"]) == VEGA_PLOTS
    for div, plot in compared["plots"].items():
        assert plot["revs"] == revs and plot["lines"] + plot["rects"] > 0, (div, plot)
        if "_roc_" in div or "_pr_" in div:
            assert plot["lines"] == len(revs), (div, plot)  # one curve per revision
    titles = [title for title, width in compared["images"] if width > 0]
    assert sorted(titles) == sorted(list(revs) * IMAGES)
    template = "reports/plots_template.html"  # paths.PLOTS_TEMPLATE_HTML, where .dvc/config points
    ignored = sh(repo, "git", "check-ignore", "dvc_plots/index.html", template).split()
    assert ignored == ["dvc_plots/index.html", template]
