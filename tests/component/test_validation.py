"""The validate and eda stages on real files: every kind of bad input gets its exact reason, odd but
valid files are kept, duplicates are grouped or rejected, the quality gate stops the pipeline, the
reports (Data Docs, MLflow run) are written, and EDA reads the manifest without decoding every image
again. MLflow is a real SQLite store in tmp_path."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray import paths
from chestxray.data import eda
from chestxray.data.eda import explore_dataset
from chestxray.data.splitting import split_dataset
from chestxray.data.validation import validate_dataset
from chestxray.errors import UserError
from chestxray.io import read_json
from chestxray.paths import MANIFEST_CSV, REJECTED_CSV, SPLIT_CSV, VALIDATE_JSON, VALIDATION_DOCS_DIR
from conftest import REPO, make_params, project

BASE = "COVID-19_Radiography_Dataset"


@pytest.fixture(autouse=True)
def store(mlflow_store: str) -> mlflow.MlflowClient:
    """Every validate run goes to the test's own MLflow store."""
    return mlflow.MlflowClient(tracking_uri=mlflow_store)


def runs(store: mlflow.MlflowClient) -> list:
    experiment = store.get_experiment_by_name("chestxray")
    return [] if experiment is None else store.search_runs([experiment.experiment_id])


@pytest.fixture
def raw(raw_dataset: Path, tmp_path: Path) -> Path:
    """A writable copy of the session's synthetic dataset (Radiography layout, 160 images, xlsx
    metadata) as ``out``'s data/raw."""
    copy = tmp_path / "out" / paths.RAW_DIR
    shutil.copytree(raw_dataset, copy)
    return copy


def written(out: Path) -> list[str]:
    """The files under ``out`` that are not the input data/raw."""
    raw = out / paths.RAW_DIR
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and raw not in p.parents)


def images(raw: Path, cls: str) -> Path:
    return raw / BASE / cls / "images"


def save(array: np.ndarray, path: Path, **kwargs) -> None:
    Image.fromarray(array).save(path, **kwargs)


def gray(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def validate(out: Path, **overrides):
    p = make_params(**overrides)
    return validate_dataset(p.data, p.validate_, out)


def rejected_reasons(out: Path) -> dict[str, str]:
    table = pd.read_csv(out / REJECTED_CSV, keep_default_na=False)
    return {Path(p).name: r for p, r in zip(table["path"], table["reason"], strict=True)}


def test_each_bad_input_gets_its_exact_reason_and_odd_valid_files_are_kept(raw, tmp_path):
    covid, normal = images(raw, "COVID"), images(raw, "Normal")
    sample = gray(covid / "COVID-10.png")
    (covid / "COVID-1.png").write_bytes(b"")  # zero bytes
    (covid / "COVID-2.png").write_text("not a png at all")  # text named .png
    data = (covid / "COVID-3.png").read_bytes()
    (covid / "COVID-3.png").write_bytes(data[: len(data) // 2])  # truncated PNG
    save(np.zeros((299, 299), np.uint8), covid / "COVID-4.png")  # all black
    save(sample[:10, :10], covid / "COVID-5.png")  # 10×10
    # odd but valid, each re-saved from its own pixels: kept
    own = gray(covid / "COVID-6.png")
    save(np.dstack([own] * 3 + [np.full_like(own, 255)]), covid / "COVID-6.png")  # RGBA
    save(gray(covid / "COVID-7.png").astype(np.uint16) * 257, covid / "COVID-7.png")  # 16-bit
    save(gray(covid / "COVID-8.png"), covid / "COVID-8.png", format="JPEG")  # a JPEG named .png
    save(np.tile(sample[:100], (1, 3)), covid / "COVID-9.png")  # 897×100
    (covid / "COVID-11.png").unlink()  # its metadata row stays: a row without a file
    # the same bytes under two labels; the copy in Normal has no metadata row
    shutil.copy(covid / "COVID-12.png", normal / "Normal-900.png")
    # a resized copy under the same label: kept, grouped with its original
    Image.open(covid / "COVID-13.png").resize((256, 256)).save(covid / "COVID-901.png")
    # a resized copy under another label: both rejected
    Image.open(normal / "Normal-1.png").resize((320, 320)).save(images(raw, "Lung_Opacity") / "Lung_Opacity-902.png")

    out = tmp_path / "out"
    metrics = validate(out, **{"validate.max_reject_fraction": 0.2})

    assert rejected_reasons(out) == {
        "COVID-1.png": "empty_file",
        "COVID-2.png": "not_an_image",
        "COVID-3.png": "corrupt_image",
        "COVID-4.png": "blank_image",
        "COVID-5.png": "too_small",
        "COVID-9.png": "bad_aspect_ratio",
        "COVID-11.png": "missing_file",
        "COVID-12.png": "duplicate_label_conflict",
        "Normal-900.png": "duplicate_label_conflict",
        "Normal-1.png": "duplicate_label_conflict",
        "Lung_Opacity-902.png": "duplicate_label_conflict",
    }
    assert metrics["rejected"] == {
        "bad_aspect_ratio": 1,
        "blank_image": 1,
        "corrupt_image": 1,
        "duplicate_label_conflict": 4,
        "empty_file": 1,
        "missing_file": 1,
        "not_an_image": 1,
        "too_small": 1,
    }
    rejected = pd.read_csv(out / REJECTED_CSV, keep_default_na=False).set_index("path")
    conflict = rejected.loc[(images(raw, "Lung_Opacity") / "Lung_Opacity-902.png").as_posix()]
    assert conflict["label"] == "Lung_Opacity" and conflict["detail"].endswith("Normal-1.png (Normal)")
    assert rejected.loc[(covid / "COVID-5.png").as_posix(), "detail"].startswith("PNG L 10x10 px")

    clean = pd.read_csv(out / MANIFEST_CSV, keep_default_na=False).set_index("path")
    assert clean.loc[(covid / "COVID-6.png").as_posix(), "mode"] == "RGBA"
    assert clean.loc[(covid / "COVID-7.png").as_posix(), "mode"].startswith("I;16")
    assert clean.loc[(covid / "COVID-8.png").as_posix(), "format"] == "JPEG"
    resized, original = clean.loc[(covid / "COVID-901.png").as_posix()], clean.loc[(covid / "COVID-13.png").as_posix()]
    assert resized["dup_group"] == original["dup_group"] != ""
    assert resized["sha256"] != original["sha256"]
    assert (clean["dup_group"] != "").sum() == 2

    assert metrics["raw"]["COVID"] == 27 + 1  # 27 files + the row without a file
    assert metrics["clean"]["COVID"] == metrics["raw"]["COVID"] - 8
    assert metrics["duplicates"] == {"exact_groups": 1, "near_groups": 2, "grouped_images": 2}
    assert metrics["metadata"]["rows_without_file"] == 1
    assert metrics["metadata"]["files_without_row"] == 3  # Normal-900, COVID-901, Lung_Opacity-902
    assert metrics["images"]["modes"]["RGBA"] == 1 and metrics["images"]["formats"]["JPEG"] == 1
    # failed: error, size, aspect, blank, every file has a metadata row; duplicates: label conflict
    assert metrics["expectations"] == {"evaluated": 13, "failed": 6}
    assert metrics["gate"] == {"max_reject_fraction": 0.2, "reject_fraction": round(11 / 163, 4), "passed": True}
    assert read_json(out / VALIDATE_JSON) == metrics


def test_a_clean_dataset_passes_with_reports_and_an_mlflow_run(raw, tmp_path, store):
    out = tmp_path / "out"
    metrics = validate(out)
    assert metrics["rejected"] == {} and metrics["raw"] == metrics["clean"]
    assert sum(metrics["clean"].values()) == 160 and metrics["expectations"]["failed"] == 0
    assert metrics["imbalance"] == {
        "max_to_min": round(metrics["clean"]["Normal"] / metrics["clean"]["Viral Pneumonia"], 3),
        "to_largest": {c: round(n / metrics["clean"]["Normal"], 3) for c, n in metrics["clean"].items()},
    }
    docs = (out / VALIDATION_DOCS_DIR / "index.html").read_text()
    assert "images" in docs and "duplicates" in docs
    assert len(list((out / VALIDATION_DOCS_DIR / "validations").rglob("*.html"))) == 2
    assert not (out / paths.EDA_DIR).exists()  # the eda stage's job

    (run,) = runs(store)
    assert run.info.run_name.startswith("validate-") and run.data.tags["stage"] == "validate"
    assert run.data.metrics["clean.COVID"] == metrics["clean"]["COVID"]
    # the params it read, and only those
    expected = {"data.layout", "data.task", "data.label_map"} | {
        f"data.csv.{k}" for k in ("metadata", "file_column", "label_column")
    }
    expected |= {f"validate.{k}" for k in make_params().validate_.model_dump()}
    assert set(run.data.params) == expected and run.data.params["validate.min_side"] == "64"
    artifacts = {a.path for folder in ("", "data", "validation") for a in store.list_artifacts(run.info.run_id, folder)}
    assert {"data/rejected.csv", "data/validate.json", "validation/index.html"} <= artifacts


def test_eda_reads_the_manifest_and_decodes_only_the_grid_images(raw, tmp_path, store, monkeypatch):
    out = tmp_path / "out"
    validate(out)
    decoded = []
    real = eda.load_gray

    def spy(path, size):
        decoded.append(Path(path).name)
        return real(path, size)

    monkeypatch.setattr(eda, "load_gray", spy)
    summary = explore_dataset(seed=3, root=out)
    clean = read_json(out / VALIDATE_JSON)["clean"]
    assert summary["counts"] == clean and summary["imbalance"] == read_json(out / VALIDATE_JSON)["imbalance"]
    assert len(decoded) == sum(min(n, 25) for n in clean.values()) < sum(clean.values())  # the 5 × 5 grids only
    page = (out / paths.EDA_DIR / "index.html").read_text()
    assert "<h2>Random sample: Viral Pneumonia</h2>" in page
    run = next(r for r in runs(store) if r.data.tags["stage"] == "eda")
    assert run.info.run_name.startswith("eda-") and run.data.params == {"seed": "3"}
    assert {a.path for a in store.list_artifacts(run.info.run_id, "eda")} == {f"eda/{f}" for f in summary["files"]}


def test_the_quality_gate_stops_and_points_to_the_rejected_table(raw, tmp_path, store):
    for i in (1, 2):
        (images(raw, "Normal") / f"Normal-{i}.png").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(
        UserError,
        match=r"2 of 160 images rejected \(1.2%\), above validate.max_reject_fraction \(1.0%\); see .*rejected.csv",
    ):
        validate(out, **{"validate.max_reject_fraction": 0.01})
    assert set(rejected_reasons(out).values()) == {"empty_file"}
    assert read_json(out / VALIDATE_JSON)["gate"]["passed"] is False
    assert not (out / MANIFEST_CSV).exists()
    assert runs(store) == []


@pytest.mark.parametrize(
    ("damage", "message", "warning"),
    [
        (
            lambda raw: shutil.rmtree(raw / BASE / "Viral Pneumonia"),
            r"class 'Viral Pneumonia' of data.task 4class has no images",
            "class Viral Pneumonia has no images (the folder is missing)",
        ),
        (
            lambda raw: [p.unlink() for p in images(raw, "Lung_Opacity").iterdir()],
            r"class 'Lung_Opacity' of data.task 4class has no images",
            "class Lung_Opacity has no images (the folder is empty)",
        ),
        (
            lambda raw: (raw / BASE / "COVID.metadata.xlsx").write_text("not a workbook"),
            r"COVID.metadata.xlsx: cannot read the metadata workbook",
            "",
        ),
    ],
    ids=["missing class folder", "empty class folder", "unreadable metadata"],
)
def test_bad_dataset_stops_with_one_line_and_writes_nothing(raw, tmp_path, caplog, damage, message, warning):
    damage(raw)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        validate(out)
    assert warning in caplog.text
    assert written(out) == []


def test_the_stage_reports_bad_input_in_one_line_without_a_traceback(raw, tmp_path):
    shutil.rmtree(raw / BASE / "Normal")
    work = tmp_path / "out"
    shutil.copy(REPO / "params.yaml", work)
    result = subprocess.run(
        [sys.executable, str(REPO / "stages/validate.py")], cwd=work, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "class 'Normal' of data.task 4class has no images" in errors[0]


def test_real_samples_keep_their_odd_files(shared, tmp_path):
    """ieee8023: .jpg files that are PNGs, RGBA, palette and 8-bit grey; all kept, modes recorded."""
    p = make_params(**{"data.task": "binary"})
    root = project(tmp_path, raw=shared / "data/covid-chestxray-dataset-sample")
    metrics = validate_dataset(p.data, p.validate_, root)
    assert metrics["rejected"] == {} and metrics["clean"] == {"COVID": 16, "non-COVID": 24}
    assert metrics["images"] == {"formats": {"JPEG": 25, "PNG": 15}, "modes": {"L": 8, "P": 1, "RGB": 21, "RGBA": 10}}
    clean = pd.read_csv(tmp_path / MANIFEST_CSV, keep_default_na=False).set_index("path")
    named_jpg = clean[[p.endswith("/000001-27.jpg") for p in clean.index]]
    assert list(named_jpg["format"]) == ["PNG"] and list(named_jpg["mode"]) == ["RGBA"]


def test_real_image_dataset_duplicates_are_grouped(shared, tmp_path):
    """covid19-image-dataset: 6 byte-identical pairs (3 across its train/test), same label: kept, grouped."""
    p = make_params(**{"data.task": "3class"})
    root = project(tmp_path, raw=shared / "data/covid19-image-dataset-sample")
    metrics = validate_dataset(p.data, p.validate_, root)
    assert metrics["rejected"] == {} and metrics["duplicates"] == {
        "exact_groups": 6,
        "near_groups": 0,
        "grouped_images": 12,
    }
    clean = pd.read_csv(tmp_path / MANIFEST_CSV, keep_default_na=False)
    pairs = (
        clean[clean["dup_group"] != ""].groupby("dup_group")["path"].apply(lambda s: sorted(Path(p).name for p in s))
    )
    assert ["COVID-00012.jpg", "COVID-00012.jpg"] in list(pairs)
    assert ["069.jpg", "radiopaedia-2019-novel-coronavirus-infected-pneumonia.jpg"] in list(pairs)


@pytest.mark.parametrize(
    ("sample", "task", "clean", "excluded"),
    [
        ("covid19-radiography-sample", "binary", {"COVID": 30, "non-COVID": 81}, {}),
        (
            "covid19-radiography-sample",
            "3class",
            {"COVID": 30, "Normal": 30, "Viral Pneumonia": 22},
            {"Lung_Opacity": 29},
        ),
        ("covid19-image-dataset-sample", "3class", {"COVID": 16, "Normal": 10, "Viral Pneumonia": 10}, {}),
        ("actualmed-sample", "binary", {"COVID": 3, "non-COVID": 3}, {}),
        ("covid-chestxray-dataset-sample", "binary", {"COVID": 16, "non-COVID": 24}, {"todo": 4, "Unknown": 1}),
    ],
)
def test_validate_labels_each_real_sample_for_the_task(shared, tmp_path, sample, task, clean, excluded):
    p = make_params(**{"data.task": task})
    metrics = validate_dataset(p.data, p.validate_, project(tmp_path, raw=shared / "data" / sample))
    assert metrics["clean"] == clean and metrics["task"]["excluded"] == excluded
    assert metrics["task"]["name"] == task and metrics["task"]["classes"] == sorted(clean)
    assert read_json(tmp_path / VALIDATE_JSON)["task"]["mapping"] == metrics["task"]["mapping"]
    manifest = pd.read_csv(tmp_path / MANIFEST_CSV, keep_default_na=False)
    assert manifest["label"].value_counts().to_dict() == clean


def test_source_split_keeps_its_test_set_and_drops_train_copies(shared, tmp_path):
    """The real covid19-image-dataset sample: 3 train images have a byte-identical copy in its test set."""
    sample = tmp_path / "data" / "raw"
    shutil.copytree(shared / "data/covid19-image-dataset-sample", sample)
    p = make_params(**{"data.task": "3class", "split.use_source_split": True})
    validate_dataset(p.data, p.validate_, tmp_path)
    metrics = split_dataset(p.split, p.validate_.near_duplicate_distance, tmp_path)
    table = pd.read_csv(tmp_path / SPLIT_CSV)
    source_test = sorted(str(q.as_posix()) for q in (sample / "Covid19-dataset/test").rglob("*.*"))
    assert sorted(table.loc[table["split"] == "test", "path"]) == source_test
    assert metrics["removed_cross_split_duplicates"] == 3
    left_out = {"069.jpg", "COVID-00012.jpg", "COVID-00033.jpg"}
    train_names = {Path(q).name for q in table.loc[table["split"] != "test", "path"]}
    assert not left_out & train_names
    assert metrics["leakage"] == {"exact_pairs": 0, "near_pairs": 0}
    assert sum(sum(c.values()) for c in metrics["counts"].values()) == 36 - 3
