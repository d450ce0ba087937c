"""The MLflow model as users get it: logged and loaded for real, served over HTTP by
`mlflow models serve` on 127.0.0.1, and used from `python -m chestxray predict`; everywhere it
names the data it was trained on, and warns when that data is synthetic."""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

import chestxray.learn.models  # noqa: F401  (registers the custom layer)
from chestxray import tracking
from chestxray.__main__ import FORMATS, free_ports, main
from chestxray.data.cache import cache_meta
from chestxray.data.images import load_gray
from chestxray.errors import UserError
from chestxray.judge.operating_point import exact_interval, operating_point
from chestxray.serve import predict, provenance, serving
from chestxray.serve.decision import decide
from chestxray.serve.provenance import SYNTHETIC_WARNING
from conftest import LOOPBACK, wait_until_up

THRESHOLD = 0.3
# As evaluate writes it (judge.operating_point): 499 of 540 COVID and 3,590 of 3,659 other test images right.
OPERATING_POINT = {
    "threshold": THRESHOLD,
    "rule": "lower_bound",
    "target_sensitivity": 0.95,
    "target_met": False,
    "val_sensitivity": 1.0,
    "val_sensitivity_lower_bound": 0.89117,
    "val_specificity": 0.9,
    "val_positives": 26,
    "sensitivity": 0.924074,
    "specificity": 0.981142,
    "positives": 540,
    "negatives": 3659,
    "ci": {"sensitivity": exact_interval(499, 540), "specificity": exact_interval(3590, 3659)},
}
SERVED_LINE = (
    "At p(COVID) ≥ 0.300: test sensitivity 0.924 [0.898, 0.945], specificity 0.981 [0.976, 0.985]"
    " (exact 95 % intervals; 540 COVID and 3,659 other test images). Threshold chosen on validation by the"
    " lower_bound rule for sensitivity 0.95 (not certified: too few validation COVID images)."
)


def stderr_once_exited(server: subprocess.Popen) -> Callable[[], str]:
    """The end of ``server``'s piped stderr once it has exited (reading it while it runs would block)."""
    return lambda: server.stderr.read()[-6000:] if server.poll() is not None else ""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A SQLite MLflow store shared by this module's tests (MLFLOW_TRACKING_URI points at it)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        yield uri


@pytest.fixture(scope="module")
def logged(store: str, trained_model: Path, cache_dir: Path) -> dict:
    """The trained model logged as the pyfunc model of a real run, registered as chestxray@champion.
    The model was trained on the session's synthetic data, and its run says so as training's does
    (its tags and data records), so the model carries the synthetic-data warning."""
    meta = cache_meta(cache_dir)
    with tracking.run(tracking.run_tags("cnn", meta["data_version"], 32)) as run_id:
        tracking.log_data_records({"download": {"source": "synthetic", "files": 160, "bytes": 1}})
        serving.log_model(trained_model, meta["classes"], 32, OPERATING_POINT)
    version = mlflow.register_model(f"runs:/{run_id}/model", "chestxray")
    MlflowClient(store).set_registered_model_alias("chestxray", "champion", version.version)
    return {
        "run_id": run_id,
        "uri": f"runs:/{run_id}/model",
        "classes": meta["classes"],
        "data_version": meta["data_version"],
        "trained_on": f"synthetic · data {meta['data_version']}",
    }


@pytest.fixture(scope="module")
def images(raw_dataset: Path) -> list[Path]:
    """Real PNG files from the session's synthetic dataset, one per class."""
    return [
        next(iter(sorted((raw_dataset / "COVID-19_Radiography_Dataset" / c / "images").glob("*.png"))))
        for c in ("COVID", "Normal", "Viral Pneumonia")
    ]


def expected(trained_model: Path, files: list[Path], classes: list[str]) -> np.ndarray:
    """The Keras model's own probabilities for the files, decoded as in training."""
    x = np.stack([load_gray(f, 32) for f in files]).astype(np.float32)[..., None]
    prob = keras.models.load_model(trained_model).predict(x, verbose=0).astype(np.float64)
    return prob / prob.sum(axis=1, keepdims=True)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_pyfunc_model_predicts_what_the_keras_model_does(logged, trained_model, images):
    model = mlflow.pyfunc.load_model(logged["uri"])
    assert model.metadata.get_input_schema().input_names() == ["image"]
    out = model.predict(pd.DataFrame({"image": [b64(f) for f in images]}))
    prob = expected(trained_model, images, logged["classes"])
    probabilities = [f"p_{c}" for c in logged["classes"]]
    assert list(out.columns) == [*probabilities, "predicted", "trained_on", "warning"]
    assert model.metadata.get_output_schema().input_names() == list(out.columns)  # the signature says so too
    np.testing.assert_allclose(out[probabilities].to_numpy(), prob, atol=1e-6)
    assert out["predicted"].tolist() == [logged["classes"][i] for i in decide(prob, logged["classes"], THRESHOLD)]
    assert out[["trained_on", "warning"]].drop_duplicates().to_dict("records") == [
        {"trained_on": logged["trained_on"], "warning": SYNTHETIC_WARNING}
    ]
    python_model = serving.load(logged["uri"])
    assert (
        python_model.threshold == THRESHOLD
        and python_model.image_size == 32
        and python_model.classes == logged["classes"]
    )


def test_the_model_carries_the_test_figures_of_its_rule(logged):
    model = serving.load(logged["uri"])
    assert model.operating_point == {key: OPERATING_POINT[key] for key in serving.SERVED_FIGURES}
    assert model.served_rule() == SERVED_LINE


def test_the_model_carries_the_data_it_was_trained_on(logged):
    model = serving.load(logged["uri"])
    assert model.data == {
        "source": "synthetic",
        "dataset": "synthetic",
        "data_version": logged["data_version"],
        "synthetic": True,
    }
    assert model.trained_on() == logged["trained_on"] and model.warning() == SYNTHETIC_WARNING


def test_real_data_is_named_without_a_warning():
    kaggle = provenance.training_data("kaggle", "tawsifurrahman/covid19-radiography-database", "0123abcd4567")
    assert kaggle == {
        "source": "kaggle",
        "dataset": "tawsifurrahman/covid19-radiography-database",
        "data_version": "0123abcd4567",
        "synthetic": False,
    }
    assert provenance.trained_on(kaggle) == "kaggle tawsifurrahman/covid19-radiography-database · data 0123abcd4567"
    assert provenance.warning(kaggle) == ""
    local = provenance.training_data("local", "covid19-radiography-sample.zip", "0123abcd4567")
    assert provenance.trained_on(local) == "local covid19-radiography-sample.zip · data 0123abcd4567"
    assert provenance.warning(local) == ""
    assert provenance.training_data("local", None, "0123abcd4567")["dataset"] == "local"  # logged before names
    unknown = provenance.training_data(None, None, None)  # a run without training's tags
    assert provenance.trained_on(unknown) == "unknown" and provenance.warning(unknown) == ""


def test_evaluate_operating_point_has_every_served_figure():
    scores = np.array([0.9, 0.8, 0.4, 0.2, 0.1])
    prob = np.column_stack([scores, 1 - scores])
    y = np.array([0, 0, 0, 1, 1])
    op = operating_point(y, prob, y, prob, ["COVID", "non-COVID"], 0.9, "point")
    assert set(serving.SERVED_FIGURES) <= set(op)
    assert serving.rule_line(op["threshold"], op) == (
        "At p(COVID) ≥ 0.400: test sensitivity 1.000 [0.292, 1.000], specificity 1.000 [0.158, 1.000]"
        " (exact 95 % intervals; 3 COVID and 2 other test images). Threshold chosen on validation by the"
        " point rule for sensitivity 0.9."
    )


def test_a_model_logged_before_the_figures_still_loads_and_predicts(logged, trained_model, images):
    settings = {"classes": logged["classes"], "image_size": 32, "threshold": 0.6}  # the settings.json of then
    with tracking.run() as run_id:
        serving._log_pyfunc(trained_model, settings)
    model = serving.load(f"runs:/{run_id}/model")
    assert model.threshold == 0.6 and model.operating_point is None and model.served_rule() is None
    assert model.trained_on() == "unknown" and model.warning() == ""  # nor the data it was trained on
    prob = expected(trained_model, images, logged["classes"])
    out = model.predict_images(np.stack([load_gray(f, 32) for f in images]))
    assert out["predicted"].tolist() == [logged["classes"][i] for i in decide(prob, logged["classes"], 0.6)]
    assert out["trained_on"].tolist() == ["unknown"] * 3 and out["warning"].tolist() == [""] * 3


def test_pyfunc_model_names_the_row_that_is_not_an_image(logged, images):
    model = mlflow.pyfunc.load_model(logged["uri"])
    with pytest.raises(mlflow.exceptions.MlflowException, match="row 1: not an image"):
        model.predict(pd.DataFrame({"image": [b64(images[0]), base64.b64encode(b"hello").decode()]}))
    with pytest.raises(mlflow.exceptions.MlflowException, match="row 0: not valid base64"):
        model.predict(pd.DataFrame({"image": ["%%%"]}))


def test_decode_errors_name_the_file(tmp_path):
    truncated = tmp_path / "cut.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(truncated)
    data = truncated.read_bytes()
    with pytest.raises(UserError, match=r"cut\.png: corrupt or truncated"):
        serving.decode(data[: len(data) // 2], 32, "cut.png")
    with pytest.raises(UserError, match=r"notes\.txt: not an image"):
        serving.decode(b"plain text", 32, "notes.txt")
    assert serving.decode(data, 16, "x").shape == (16, 16)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with LOOPBACK.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_models_serve_answers_over_http(logged, trained_model, images, store):
    port = free_ports(1)[0]
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [
            str(mlflow_cli),
            "models",
            "serve",
            "-m",
            logged["uri"],
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        # the server starts `uvicorn` by name: the venv's bin must be on PATH, as when it is activated
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": store,
            "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ['PATH']}",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, "mlflow models serve", stderr_once_exited(server))
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = post(url, {"dataframe_split": {"columns": ["image"], "data": [[b64(f)] for f in images]}})
        assert status == 200, body
        rows = body["predictions"]
        prob = expected(trained_model, images, logged["classes"])
        np.testing.assert_allclose([[row[f"p_{c}"] for c in logged["classes"]] for row in rows], prob, atol=1e-6)
        assert [row["predicted"] for row in rows] == [
            logged["classes"][i] for i in decide(prob, logged["classes"], THRESHOLD)
        ]
        assert [(row["trained_on"], row["warning"]) for row in rows] == [(logged["trained_on"], SYNTHETIC_WARNING)] * 3
        status, body = post(url, {"dataframe_records": [{"image": base64.b64encode(b"not a png").decode()}]})
        assert status == 400 and "row 0: not an image" in body["message"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_cli(*args: str, cwd: Path, store: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chestxray", *args],
        check=False,
        cwd=cwd,
        # TF_CPP_MIN_LOG_LEVEL left out: importing chestxray.stage here set it for this process; the CLI must set it
        env={**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, "MLFLOW_TRACKING_URI": store},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_command_on_files_and_folders_with_the_champion(logged, trained_model, images, store, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(images[:2]):
        (folder / "sub" / f"{i}.png").write_bytes(f.read_bytes())
    (folder / "notes.txt").write_text("not an image, and not picked up: wrong suffix")
    out = tmp_path / "pred.csv"
    done = run_cli(
        "predict", str(folder), str(images[2]), "--format", "csv", "--output", str(out), cwd=tmp_path, store=store
    )
    assert done.returncode == 0, done.stderr
    assert "absl::InitializeLog" not in done.stderr and "cpu_feature_guard" not in done.stderr  # TF quiet
    assert "models:/chestxray@champion" in done.stderr  # the default model, no params.yaml here
    assert SERVED_LINE in done.stderr
    warned = f" WARNING chestxray.serve.predict: {SYNTHETIC_WARNING}: the model was trained on {logged['trained_on']}"
    assert warned in done.stderr
    table = pd.read_csv(out)
    assert table["path"].tolist() == [str(folder / "sub/0.png"), str(folder / "sub/1.png"), str(images[2])]
    prob = expected(trained_model, images, logged["classes"])
    np.testing.assert_allclose(table[[f"p_{c}" for c in logged["classes"]]].to_numpy(), prob, atol=1e-6)
    assert table["predicted"].tolist() == [logged["classes"][i] for i in decide(prob, logged["classes"], THRESHOLD)]

    done = run_cli("predict", str(images[0]), "--model", logged["uri"], "--format", "json", cwd=tmp_path, store=store)
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["path"] == str(images[0]) and sum(row[f"p_{c}"] for c in logged["classes"]) == pytest.approx(1, abs=1e-5)
    done = run_cli("predict", str(images[0]), cwd=tmp_path, store=store)
    banner, header, line = done.stdout.splitlines()
    assert banner == f"WARNING: {SYNTHETIC_WARNING}"
    assert header.split()[0] == "path" and header.split()[-3:] == ["predicted", "trained_on", "warning"]
    assert "p_Viral Pneumonia" in header
    assert line.split()[0] == str(images[0]) and line.endswith(f"{logged['trained_on']} {SYNTHETIC_WARNING}")


@pytest.mark.shared
def test_predict_on_a_real_xray_warns_that_the_model_saw_only_synthetic_data(
    logged, radiography_sample, capsys, caplog
):
    """`python -m chestxray predict` (its main, in this process) on a real X-ray with the champion,
    trained on synthetic data: the warning in every format, and logged as a WARNING each time."""
    xray = radiography_sample / "COVID-19_Radiography_Dataset/COVID/images/COVID-1.png"
    out = {}
    for fmt in FORMATS:
        with caplog.at_level(logging.INFO, logger="chestxray"):
            assert main(["predict", str(xray), "--model", logged["uri"], "--format", fmt]) == 0
        out[fmt] = capsys.readouterr().out
    banner, header, line = out["table"].splitlines()
    assert banner == f"WARNING: {SYNTHETIC_WARNING}" and header.split()[-2:] == ["trained_on", "warning"]
    assert line.startswith(str(xray)) and line.endswith(f"{logged['trained_on']} {SYNTHETIC_WARNING}")
    [row] = json.loads(out["json"])
    assert (row["path"], row["trained_on"], row["warning"]) == (str(xray), logged["trained_on"], SYNTHETIC_WARNING)
    [row] = pd.read_csv(io.StringIO(out["csv"])).to_dict("records")
    assert (row["path"], row["trained_on"], row["warning"]) == (str(xray), logged["trained_on"], SYNTHETIC_WARNING)
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("chestxray")
    ]
    assert warnings == [f"{SYNTHETIC_WARNING}: the model was trained on {logged['trained_on']}"] * 3


def test_a_model_trained_on_real_data_names_it_and_does_not_warn(logged, images, caplog):
    """The logged model with its settings' ``data`` planted as a Kaggle-trained model's (set on the
    loaded model, not logged again: no model here was trained on real data)."""
    model = copy.copy(serving.load(logged["uri"]))
    model.data = provenance.training_data("kaggle", "tawsifurrahman/covid19-radiography-database", "0123abcd4567")
    trained_on = "kaggle tawsifurrahman/covid19-radiography-database · data 0123abcd4567"
    with caplog.at_level(logging.INFO, logger="chestxray"):
        table = predict.predict_files(model, images)
    assert table["trained_on"].tolist() == [trained_on] * 3 and table["warning"].tolist() == [""] * 3
    assert f"the model was trained on {trained_on}" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("chestxray")]
    text = predict.render(table, "table")
    assert "WARNING" not in text and text.splitlines()[0].split()[-2:] == ["trained_on", "warning"]
    served = model.predict(None, pd.DataFrame({"image": [b64(images[0])]}))  # the served DataFrame
    assert served[["trained_on", "warning"]].to_dict("records") == [{"trained_on": trained_on, "warning": ""}]


def test_predict_command_refuses_unreadable_files_in_one_line(logged, images, store, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but cut short")
    out = tmp_path / "pred.json"
    out.write_text("earlier results")
    done = run_cli(
        "predict", str(images[0]), str(bad), "--output", str(out), "--format", "json", cwd=tmp_path, store=store
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{bad}: " in errors[0] and "1 of 2 file(s) cannot be read" in errors[0]
    assert "Traceback" not in done.stderr and out.read_text() == "earlier results"
    done = run_cli("predict", str(tmp_path / "missing.png"), cwd=tmp_path, store=store)
    assert done.returncode == 1 and "missing.png: no such file or folder" in done.stderr


def test_predict_without_a_champion_says_what_to_do(tmp_path, images):
    store = f"sqlite:///{tmp_path / 'empty.db'}"
    done = run_cli("predict", str(images[0]), cwd=tmp_path, store=store)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot load the model models:/chestxray@champion" in done.stderr and "dvc repro" in done.stderr
