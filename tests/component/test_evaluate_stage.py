"""The evaluate and audit stages end to end on a real trained model, a real cache and a real MLflow store."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import binomtest

from chestxray import paths, tracking
from chestxray.config import EvaluateSettings
from chestxray.data.cache import cache_meta, load_split
from chestxray.data.images import inspect
from chestxray.data.occlusion import keep_centre, occlude
from chestxray.io import read_json, write_csv, write_json
from chestxray.judge import model_card
from chestxray.judge.audit import audit_model
from chestxray.judge.evaluation import evaluate_model
from chestxray.judge.metrics import METRICS, classification_metrics
from chestxray.learn.models import predict_proba
from chestxray.serve import serving
from chestxray.serve.decision import decide
from conftest import make_params, project

CFG = EvaluateSettings(
    seed=42,
    target_sensitivity=0.95,
    threshold_rule="lower_bound",
    bootstrap=1000,
    calibration_bins=10,
    gradcam_images=2,
    external=[],
)


@pytest.fixture
def prepared(trained_model: Path, cache_dir: Path, tmp_path: Path, mlflow_store: str) -> dict:
    """A project ready for evaluate_model: the session's trained model, its FINISHED training run
    and the records the stage reads."""
    meta = cache_meta(cache_dir)
    root = project(tmp_path, cache=cache_dir)
    models = root / paths.MODEL_DIR
    models.mkdir()
    shutil.copy(trained_model, models / "model.keras")
    with tracking.run(tracking.run_tags("cnn", meta["data_version"], image_size=32)) as run_id:
        pass
    run = {"run_id": run_id, "model": "cnn", "weights": "none", "imbalance": "class_weight"}
    write_json(
        models / "run.json",
        {**run, "classes": meta["classes"], "image_size": 32, "occlude": 0.0, "data_version": meta["data_version"]},
    )
    counts = {
        s: {
            c: int(n)
            for c, n in zip(meta["classes"], np.bincount(load_split(cache_dir, s)[1], minlength=4), strict=True)
        }
        for s in ("train", "val", "test")
    }
    write_json(
        root / paths.SPLIT_JSON,
        {
            "counts": counts,
            "data_version": meta["data_version"],
            "groups": 160,
            "grouping": {"by": "duplicate group", "images_without_patient_id": 160},
            "leakage": {"exact_pairs": 0, "near_pairs": 0},
        },
    )
    write_json(
        root / paths.TRAIN_JSON,
        {
            "best_epoch": 6,
            "best_val_loss": 0.9,
            "best_val_accuracy": 0.6,
            "epochs_run": 8,
            "params": 1234,
            "train_seconds": 1.0,
            "model_mb": 0.1,
        },
    )
    write_json(root / paths.DOWNLOAD_JSON, {"source": "synthetic", "files": 320, "bytes": 1})
    return {"root": tmp_path, "run_id": run_id, "classes": meta["classes"], "model": models / "model.keras"}


@pytest.fixture
def evaluated(prepared: dict) -> dict:
    """evaluate_model run on the prepared project."""
    return {**prepared, "metrics": evaluate_model(CFG, prepared["root"])}


def test_evaluate_writes_every_metric_with_cis_and_the_operating_point(evaluated, cache_dir):
    import keras

    m = evaluated["metrics"]
    assert read_json(evaluated["root"] / paths.EVALUATE_JSON) == m
    assert read_json(evaluated["root"] / paths.EVALUATE_METRICS) == {  # the headline: the same keys, nested alike
        "data_version": m["data_version"],
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "ci": {"macro_f1": {"low": m["ci"]["macro_f1"]["low"], "high": m["ci"]["macro_f1"]["high"]}},
        "operating_point": {k: m["operating_point"][k] for k in ("sensitivity", "specificity")},
    }
    for key in (*(metric.name for metric in METRICS), "n", "data_version", "run_id"):
        assert m[key] is not None, key
    split_keys = {metric.name for metric in METRICS} | {"n", "groups", "per_class", "ci"}
    assert set(m) == split_keys | {"validation", "operating_point", "data_version", "run_id"}
    assert set(m["validation"]) == split_keys
    model = keras.models.load_model(evaluated["model"])
    for split, scored in (("test", m), ("val", m["validation"])):
        x, y = load_split(cache_dir, split)
        again = classification_metrics(y, predict_proba(model, x), evaluated["classes"])
        assert {k: scored[k] for k in again} == again, split  # the split's own images, nothing else
        assert scored["groups"] == pd.read_csv(cache_dir / f"{split}.csv")["group"].nunique()
        assert set(scored["ci"]) == {metric.name for metric in METRICS if metric.ci}
        assert {"balanced_accuracy", "roc_auc_macro", "ece"} <= set(scored["ci"])
        for name, ci in scored["ci"].items():  # each interval holds its point estimate, or says it collapsed
            assert ci["collapsed"] or ci["low"] <= scored[name] <= ci["high"], (split, name)
    assert (m["covid_sensitivity"], m["covid_specificity"]) == (
        m["per_class"]["COVID"]["recall"],
        m["per_class"]["COVID"]["specificity"],
    )
    assert set(m["per_class"]["COVID"]) == {"precision", "recall", "specificity", "f1", "support", "roc_auc", "pr_auc"}
    # the threshold is scored on the validation split, recomputed from the saved model
    x_val, y_val = load_split(cache_dir, "val")
    p_covid = predict_proba(model, x_val)[:, 0]
    op = m["operating_point"]
    assert np.mean(p_covid[y_val == 0] >= op["threshold"]) == pytest.approx(op["val_sensitivity"])
    assert op["rule"] == "lower_bound" and op["val_positives"] == int((y_val == 0).sum())
    x, y = load_split(cache_dir, "test")
    called = predict_proba(model, x)[:, 0] >= op["threshold"]
    found, positives = int(called[y == 0].sum()), int((y == 0).sum())
    exact = binomtest(found, positives).proportion_ci(confidence_level=0.95, method="exact")
    assert op["sensitivity"] == pytest.approx(found / positives) and op["positives"] == positives
    assert op["ci"]["sensitivity"] == {
        "low": pytest.approx(exact.low, abs=1e-6),
        "high": pytest.approx(exact.high, abs=1e-6),
    }


def test_evaluate_writes_tables_plots_and_gallery(evaluated):
    out = evaluated["root"] / "reports"
    table = pd.read_csv(out / "evaluate" / "predictions.csv")
    m = evaluated["metrics"]
    assert len(table) == m["n"]
    prob = table[[f"p_{c}" for c in evaluated["classes"]]].to_numpy()
    decided = np.asarray(evaluated["classes"])[decide(prob, evaluated["classes"], m["operating_point"]["threshold"])]
    assert table["predicted_at_threshold"].tolist() == decided.tolist()
    assert pd.read_csv(out / "evaluate" / "reliability.csv")["count"].sum() == m["n"]
    for name in ("confusion", "roc", "pr", "reliability"):
        with Image.open(out / "evaluate" / f"{name}.png") as im:
            assert im.width > 300 and im.height > 300, name
    assert {p.stem for p in (out / "evaluate" / "pr").glob("*.csv")} == set(evaluated["classes"])
    assert (out / "gradcam" / "index.md").is_file() and (out / "gradcam" / "COVID.png").is_file()


def test_evaluate_logs_everything_and_the_servable_model_to_the_run(evaluated, mlflow_store):
    client = mlflow.MlflowClient(mlflow_store)
    run_id, m = evaluated["run_id"], evaluated["metrics"]
    run = client.get_run(run_id)
    logged = run.data.metrics
    assert logged["test.ci.macro_f1.low"] == m["ci"]["macro_f1"]["low"]
    assert all(logged[f"test.{metric.name}"] == m[metric.name] for metric in METRICS)
    assert all(logged[f"val.{metric.name}"] == m["validation"][metric.name] for metric in METRICS)
    assert logged["val.ci.macro_f1.high"] == m["validation"]["ci"]["macro_f1"]["high"]
    assert not any(key.startswith("test.validation.") for key in logged)
    # the settings it read, as tags (MLflow params cannot change; a run is evaluated again when only they do)
    assert {k: v for k, v in run.data.tags.items() if k.startswith("evaluate.")} == {
        f"evaluate.{k}": str(v) for k, v in CFG.model_dump(exclude={"external"}).items()
    }
    assert run.data.params == {}  # evaluate logs no params (nor does MLflow for the model's settings)
    assert logged["test.operating_point.threshold"] == m["operating_point"]["threshold"]
    assert logged["test.per_class.COVID.pr_auc"] == m["per_class"]["COVID"]["pr_auc"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"evaluate", "gradcam"} <= top
    files = {a.path for a in client.list_artifacts(run_id, "evaluate")}
    assert {
        "evaluate/predictions.csv",
        "evaluate/reliability.png",
        "evaluate/pr.png",
        "evaluate/confusion.png",
    } <= files
    model = serving.load(f"runs:/{run_id}/model")
    assert model.threshold == pytest.approx(m["operating_point"]["threshold"]) and model.classes == evaluated["classes"]


def fill_the_disk_when_the_model_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's copy of the model's files into the store fails as on a full disk. (A real full disk
    cannot be made here: it needs root, for a small tmpfs or loop mount.) The logged model exists by
    then, so MLflow marks it FAILED, as it did when the disk filled up."""

    def disk_full(self, model_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), local_dir)

    monkeypatch.setattr(mlflow.MlflowClient, "log_model_artifacts", disk_full)


def models_of(run_id: str) -> list[tuple[str, str]]:
    """(id, status) of every logged model of the run that is not deleted, newest first."""
    client = mlflow.MlflowClient(tracking.tracking_uri())
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
    return [(m.model_id, str(m.status)) for m in found]


def test_a_first_evaluation_that_fails_leaves_no_trace_dvc_or_compare_would_trust(prepared, monkeypatch):
    run_id, root = prepared["run_id"], prepared["root"]
    before = mlflow.get_run(run_id).info
    fill_the_disk_when_the_model_is_logged(monkeypatch)
    with pytest.raises(OSError, match="No space left on device") as failure:
        evaluate_model(CFG, root)
    assert failure.value.errno == errno.ENOSPC
    after = mlflow.get_run(run_id)
    assert (after.info.status, after.info.end_time) == ("FINISHED", before.end_time)
    assert "test.macro_f1" in after.data.metrics  # it did get as far as the model
    assert models_of(run_id) == [] and tracking.logged_model_id(run_id) is None
    assert not (root / paths.EVALUATE_JSON).exists()  # so DVC does not take the stage as done
    assert not (root / paths.EVALUATE_METRICS).exists()
    assert not [*(root / "metrics").glob(".evaluate.json.tmp-*"), *(root / "reports").glob(".evaluate.json.tmp-*")]


def test_a_failed_re_evaluation_keeps_the_earlier_model_and_evaluate_json(evaluated, monkeypatch):
    run_id, root = evaluated["run_id"], evaluated["root"]
    before = mlflow.get_run(run_id).info
    earlier = tracking.logged_model_id(run_id)
    assert models_of(run_id) == [(earlier, "READY")]
    evaluate_json = (root / paths.EVALUATE_JSON).read_bytes()
    headline_json = (root / paths.EVALUATE_METRICS).read_bytes()
    fill_the_disk_when_the_model_is_logged(monkeypatch)
    # at another operating point, so evaluate.json would change
    with pytest.raises(OSError, match="No space left on device") as failure:
        evaluate_model(CFG.model_copy(update={"target_sensitivity": 0.5}), root)
    assert failure.value.errno == errno.ENOSPC
    after = mlflow.get_run(run_id).info
    assert (after.status, after.end_time) == ("FINISHED", before.end_time)
    assert models_of(run_id) == [(earlier, "READY")] and tracking.logged_model_id(run_id) == earlier
    assert (root / paths.EVALUATE_JSON).read_bytes() == evaluate_json
    assert (root / paths.EVALUATE_METRICS).read_bytes() == headline_json


# The audit stage, after evaluate


@pytest.fixture
def audited(evaluated: dict, cache_dir: Path) -> dict:
    """audit_model run on the evaluated project: its manifest (the layout's columns with each image's
    sha256 and perceptual hash, as validate writes them) and split table come from the session's
    synthetic dataset, which ships lung masks."""
    root = evaluated["root"]
    split = pd.read_csv(cache_dir.parent / "split.csv", keep_default_na=False, dtype=str)
    infos = [inspect(Path(p)) for p in split["path"]]
    manifest = split.drop(columns=["split"]).assign(sha256=[i.sha256 for i in infos], phash=[i.phash for i in infos])
    write_csv(root / paths.MANIFEST_CSV, manifest)
    write_csv(root / paths.SPLIT_CSV, split[["path", "label", "split"]].assign(sha256=manifest["sha256"]))
    params = make_params(**{"audit.min_source_images": 5})
    return {**evaluated, "params": params, "audit": audit_model(params, root)}


def test_audit_scores_occlusion_lungs_sources_and_leakage(audited, cache_dir):
    import keras

    a, root = audited["audit"], audited["root"]
    assert read_json(root / paths.AUDIT_JSON) == a
    assert read_json(root / paths.AUDIT_METRICS) == {  # the headline
        "audit": {k: {m: a["audit"][k][m]} for k, m in (("occluded", "macro_f1"), ("gradcam_in_lungs", "overall"))},
        "leakage": {"nearest_train_distance": {"min": a["leakage"]["nearest_train_distance"]["min"]}},
    }
    assert set(a) == {
        "run_id", "data_version", "audit_run", "data_occlude", "audit", "per_source", "external", "leakage",
        "border_only",
    }  # fmt: skip
    assert a["audit_run"] is False and a["border_only"] is None and a["external"] == {}
    model = keras.models.load_model(audited["model"])
    x, y = load_split(cache_dir, "test")
    for key, view in (("occluded", occlude), ("lungs_only", keep_centre)):  # recomputed from the saved model
        again = classification_metrics(y, predict_proba(model, view(x, 0.6, "mean")), audited["classes"])
        assert a["audit"][key] == {"macro_f1": again["macro_f1"], "accuracy": again["accuracy"]}, key
    assert a["audit"]["headline"] == {k: audited["metrics"][k] for k in ("macro_f1", "accuracy")}
    cam = a["audit"]["gradcam_in_lungs"]
    assert cam["n"] == len(y) and 0 <= cam["overall"] <= 1 and 0.1 < cam["lung_area"] < 0.6
    # the synthetic workbooks give one URL per class; Lung_Opacity and Normal share the RSNA one
    rsna = "kaggle.com/c/rsna-pneumonia-detection-challenge/data"
    assert set(a["per_source"][rsna]["classes"]) == {"Lung_Opacity", "Normal"}
    assert sum(s["n"] for s in a["per_source"].values()) <= len(y)
    leak = a["leakage"]
    assert leak["nearest_train_distance"]["n"] == len(y) and leak["split_distance"] == 12
    assert leak["audit_distance"] == 32
    nearest = pd.read_csv(root / paths.AUDIT_DIR / "nearest_train.csv")
    assert len(nearest) == len(y) and nearest["distance"].min() == leak["nearest_train_distance"]["min"]


def test_audit_writes_the_card_with_the_shortcut_audit_and_logs_it(audited, mlflow_store):
    m, a, root = audited["metrics"], audited["audit"], audited["root"]
    card = (root / paths.MODEL_CARD_MD).read_text()
    assert card.index("## Metrics of the argmax rule") < card.index("## Shortcut audit")
    assert card.index("## Shortcut audit") < card.index("## Known limitations")
    occluded = a["audit"]["occluded"]
    assert f"| the image with its central 60% × 60% hidden (grey) | {occluded['macro_f1']:.3f} |" in card
    assert "No border-only audit run on this data version yet" in card and "dvc exp run -S data.occlude=0.6" in card
    assert f"falls inside the lung fields, which cover {a['audit']['gradcam_in_lungs']['lung_area']:.0%}" in card
    assert "External validation**: none" in card
    val, ci = m["validation"], m["ci"]["macro_f1"]
    span = "collapsed" if ci["collapsed"] else f"[{ci['low']:.3f}, {ci['high']:.3f}]"
    assert f"| Macro F1 | {val['macro_f1']:.3f} | {m['macro_f1']:.3f} | {span} |" in card
    for metric in METRICS:  # every metric of the registry has its row: validation, then test
        assert f"| {metric.title} | {val[metric.name]:.3f} | {m[metric.name]:.3f} |" in card, metric.name
    # the served rule leads, before any argmax number, with its exact intervals
    op = m["operating_point"]
    served = card.index("## The served rule")
    assert served < card.index("## Metrics of the argmax rule") and "argmax" not in card[:served]
    assert f"p(COVID) ≥ **{op['threshold']:.3f}**" in card
    sens = op["ci"]["sensitivity"]
    assert f"**sensitivity {op['sensitivity']:.3f}** [{sens['low']:.3f}, {sens['high']:.3f}]" in card
    # the split of this test's cache has no patient ids: the card does not say it was grouped by patient
    assert "by patient" not in card and "the source has no patient ids" in card
    assert m["data_version"] in card and "paediatric" in card and "synthetic" in card
    warning, _, trained_on = card.splitlines()[2:5]  # first, under the title: the data, and its warning
    assert warning.startswith("> **WARNING: synthetic data: not meaningful on real X-rays.**")
    assert model_card.REAL_DATA in warning and trained_on == f"Trained on: **synthetic · data {m['data_version']}**."
    assert "| total | " in card and "Clopper-Pearson" in card
    run = mlflow.MlflowClient(mlflow_store).get_run(audited["run_id"])
    assert run.data.metrics["audit.occluded.macro_f1"] == occluded["macro_f1"]
    assert run.data.metrics["audit.gradcam_in_lungs.overall"] == a["audit"]["gradcam_in_lungs"]["overall"]
    assert run.data.tags["audit.occlude"] == "0.6"
    top = {x.path for x in mlflow.MlflowClient(mlflow_store).list_artifacts(audited["run_id"])}
    assert {"audit", "model_card.md"} <= top
