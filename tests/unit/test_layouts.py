"""Layout adapters on the real samples in ../shared and on small folders built here.

Expected values come from sources independent of the code under test: the samples' NOTES.md
(counts written out below), PROVENANCE.csv, directory listings and the CSVs read with ``csv``.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from PIL import Image

from chestxray.config import CsvOptions
from chestxray.data.layouts import detect_layout, read_layout
from chestxray.data.layouts.common import COLUMNS, source_name, url_source
from chestxray.errors import UserError

EMPTY_RECON = {"matched": 0, "matched_case_insensitive": 0, "files_without_row": 0, "rows_without_file": 0}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> set[str]:
    """Every file under ``root``, as posix paths (an independent listing with os.walk)."""
    return {Path(d, f).as_posix() for d, _, files in os.walk(root) for f in files}


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path, format="PNG")
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _check_columns(table) -> None:
    assert tuple(table.columns) == COLUMNS
    assert list(table["path"]) == sorted(table["path"])


# --- real samples ----------------------------------------------------------------------------


def test_radiography_sample_matches_provenance(shared):
    root = shared / "data/covid19-radiography-sample"
    assert detect_layout(root) == "covid19-radiography"
    table, recon = read_layout(root)
    _check_columns(table)
    provenance = _csv_rows(root / "PROVENANCE.csv")
    expected = {(row["file"], row["class"]) for row in provenance}
    got = {
        (Path(p).relative_to(root).as_posix(), label)
        for p, label in zip(table["path"], table["source_label"], strict=True)
    }
    assert got == expected and len(table) == len(provenance) == 111
    assert Counter(table["source_label"]) == {"COVID": 30, "Lung_Opacity": 29, "Normal": 30, "Viral Pneumonia": 22}
    for column in ("patient_id", "sex", "age", "view", "mask_path", "source_split", "in_metadata", "source"):
        assert (table[column] == "").all(), column
    assert recon == {}  # no <Class>.metadata.xlsx in the sample (so no URL column either)


def test_covid19_image_dataset_sample_matches_notes(shared):
    root = shared / "data/covid19-image-dataset-sample"
    assert detect_layout(root) == "covid19-image-dataset"
    table, recon = read_layout(root)
    _check_columns(table)
    assert recon == {}
    counts = Counter(zip(table["source_split"], table["source_label"], strict=True))
    assert counts == {
        ("train", "Covid"): 10,
        ("train", "Normal"): 6,
        ("train", "Viral Pneumonia"): 6,
        ("test", "Covid"): 6,
        ("test", "Normal"): 4,
        ("test", "Viral Pneumonia"): 4,
    }
    assert Counter(table["path"]) == Counter(_files(root / "Covid19-dataset"))  # every file once, nothing else
    for path, split, label in zip(table["path"], table["source_split"], table["source_label"], strict=True):
        assert Path(path).parent.name == label and Path(path).parent.parent.name == split
    same_name = table[(table["source_split"] == "train") & table["path"].str.endswith("/01.jpeg")]
    assert sorted(same_name["source_label"]) == ["Covid", "Normal", "Viral Pneumonia"]  # 3 different images
    assert (table[["patient_id", "sex", "age", "view", "mask_path", "in_metadata", "source"]] == "").all().all()


def test_covid19_image_dataset_root_can_be_the_inner_folder(shared):
    inner = shared / "data/covid19-image-dataset-sample/Covid19-dataset"
    assert detect_layout(inner) == "covid19-image-dataset"
    table, _ = read_layout(inner, "covid19-image-dataset")
    assert len(table) == 36 and set(table["source_split"]) == {"train", "test"}


def test_ieee8023_sample_matches_notes_and_csv(shared):
    root = shared / "data/covid-chestxray-dataset-sample"
    assert detect_layout(root) == "csv"
    table, recon = read_layout(root)
    _check_columns(table)
    assert recon == {**EMPTY_RECON, "matched": 45, "rows_not_image": 0, "rows_other_modality": 0}
    assert len(table) == 45
    assert Counter(table["source_label"]) == {
        "COVID-19": 14,
        "No Finding": 6,
        "todo": 4,
        "COVID-19, ARDS": 2,
        "SARS": 2,
        "Pneumocystis": 2,
        "Streptococcus": 2,
        "Pneumonia": 2,
        "ARDS": 1,
        "Bacterial": 1,
        "Chlamydophila": 1,
        "E.Coli": 1,
        "Influenza": 1,
        "Klebsiella": 1,
        "Legionella": 1,
        "Lipoid": 1,
        "Mycoplasma Bacterial Pneumonia": 1,
        "Unknown": 1,
        "Varicella": 1,
    }
    assert table["patient_id"].nunique() == 37
    assert Counter(table["view"]) == {"PA": 28, "AP Supine": 8, "AP": 5, "": 3, "?": 1}
    assert (table["sex"] == "").sum() == 4 and set(table["sex"]) == {"M", "F", ""}
    assert (table["age"] == "").sum() == 5
    assert not table["age"].str.contains(".", regex=False).any()
    assert table["in_metadata"].eq(True).all()
    assert (table[["mask_path", "source_split"]] == "").all().all()
    # file by file against the CSV as the csv module reads it
    by_path = table.set_index("path")
    for row in _csv_rows(root / "metadata.csv"):
        got = by_path.loc[(root / row["folder"] / row["filename"]).as_posix()]
        assert (got["source_label"], got["patient_id"], got["sex"], got["age"], got["view"]) == (
            row["finding"],
            row["patientid"],
            row["sex"],
            row["age"],
            row["view"],
        )
    assert set(table["path"]) == _files(root / "images")
    # the 3 `.jpg` files that are really PNG (NOTES.md), found here by their magic bytes
    jpgs = [p for p in _files(root / "images") if p.endswith(".jpg")]
    png_named_jpg = {p for p in jpgs if Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"}
    expected_pngs = {"000001.jpg", "000001-27.jpg", "10.1016-slash-j.healun.2020.04.004.jpg"}
    assert {Path(p).name for p in png_named_jpg} == expected_pngs
    assert png_named_jpg <= set(table["path"])


@pytest.mark.shared
def test_ieee8023_sample_sources_are_the_hosts_of_its_url_column(shared):
    root = shared / "data/covid-chestxray-dataset-sample"
    table, _ = read_layout(root)
    # counted from metadata.csv's url column (one article or case page per image); www. dropped
    assert Counter(table["source"]) == {
        "eurorad.org": 13,
        "radiopaedia.org": 11,
        "sciencedirect.com": 4,
        "yxppt.com": 3,
        "rad2share.com": 3,
        "pubs.rsna.org": 2,
        "ncbi.nlm.nih.gov": 2,
        "github.com": 2,
        "onlinelibrary.wiley.com": 1,
        "nature.com": 1,
        "radiologyassistant.nl": 1,
        "jhltonline.org": 1,
        "ajtmh.org": 1,
    }
    by_path = table.set_index("path")["source"]
    image = (root / "images/acute-respiratory-distress-syndrome-ards.jpg").as_posix()
    assert by_path[image] == "radiopaedia.org"  # https://radiopaedia.org/cases/acute-respiratory-distress-syndrome-ards


def test_actualmed_sample_matches_csv(shared):
    root = shared / "data/actualmed-sample"
    assert detect_layout(root) == "csv"
    table, recon = read_layout(root)
    _check_columns(table)
    assert recon == {**EMPTY_RECON, "matched": 6, "rows_not_image": 0, "rows_other_modality": 0}
    assert len(table) == 6 and Counter(table["source_label"]) == {"COVID-19": 3, "No finding": 3}
    rows = _csv_rows(root / "metadata.csv")
    expected = {(root / "images" / r["imagename"]).as_posix(): (r["finding"], r["patientid"], r["view"]) for r in rows}
    columns = zip(table["path"], table["source_label"], table["patient_id"], table["view"], strict=True)
    got = {p: (s, pid, v) for p, s, pid, v in columns}
    assert got == expected
    assert set(table["path"]) == _files(root / "images")
    assert (table[["sex", "age", "source"]] == "").all().all()  # empty in every row; no url column
    rgba = root / "images/CR.1.2.840.113564.192168196.2020031913094890017.1203801020003.png"
    assert rgba.as_posix() in set(table["path"])
    # DICOM-UID-like names with many dots stay whole: exactly the CSV's imagename values
    assert {Path(p).name for p in table["path"]} == {r["imagename"] for r in rows}
    assert all(Path(p).name.count(".") >= 8 for p in table["path"])


def test_radiography_metadata_workbooks_are_reconciled(raw_dataset):
    """The synthetic set ships <Class>.metadata.xlsx; its Normal sheet writes NORMAL-<n> (upper case)."""
    table, recon = read_layout(raw_dataset)
    _check_columns(table)
    normals = int((table["source_label"] == "Normal").sum())
    assert len(table) == 160 and normals > 0
    assert recon == {**EMPTY_RECON, "matched": 160 - normals, "matched_case_insensitive": normals}
    assert table["in_metadata"].eq(True).all()
    assert all(Path(m).is_file() for m in table["mask_path"])
    # each class sheet's URL column (data/synthetic.py writes one URL per class), without scheme and www.
    sources = dict(zip(table["source_label"], table["source"], strict=True))
    assert sources == {
        "COVID": "github.com/ieee8023/covid-chestxray-dataset",
        "Lung_Opacity": "kaggle.com/c/rsna-pneumonia-detection-challenge/data",
        "Normal": "kaggle.com/c/rsna-pneumonia-detection-challenge/data",  # matched ignoring case (NORMAL-<n>)
        "Viral Pneumonia": "kaggle.com/paultimothymooney/chest-xray-pneumonia",
    }
    assert table.groupby("source_label")["source"].nunique().eq(1).all()


# --- built here ------------------------------------------------------------------------------


def test_class_folders_descend_into_a_single_wrapper(tmp_path, monkeypatch):
    for name in ("cats/a.png", "cats/more/b.PNG", "dogs/c.png", ".hidden/d.png"):
        _png(tmp_path / "ds/mydata" / name)
    _write(tmp_path / "ds/mydata/README.txt", "zip wrapper")
    monkeypatch.chdir(tmp_path)
    root = Path("ds")
    assert detect_layout(root) == "class-folders"
    table, recon = read_layout(root)
    _check_columns(table)
    assert recon == {}
    assert list(zip(table["path"], table["source_label"], table["source"], strict=True)) == [
        ("ds/mydata/cats/a.png", "cats", ""),
        ("ds/mydata/cats/more/b.PNG", "cats", "more"),
        ("ds/mydata/dogs/c.png", "dogs", ""),
    ]
    assert (table.drop(columns=["path", "source_label", "source"]) == "").all().all()


def test_class_folders_source_is_the_folder_path_below_the_class(tmp_path):
    for name in ("COVID/site-a/1.png", "COVID/site-a/2020/03/2.png", "Normal/St. Mary's (PA)/3.png", "Normal/4.png"):
        _png(tmp_path / name)
    table, _ = read_layout(tmp_path, "class-folders")
    assert dict(zip(table["path"], table["source"], strict=True)) == {
        (tmp_path / "COVID/site-a/1.png").as_posix(): "site-a",
        (tmp_path / "COVID/site-a/2020/03/2.png").as_posix(): "site-a/2020/03",
        (tmp_path / "Normal/St. Mary's (PA)/3.png").as_posix(): "St. Mary_s _PA_",
        (tmp_path / "Normal/4.png").as_posix(): "",
    }


def test_radiography_workbook_urls_are_matched_as_file_names_are(tmp_path):
    base = tmp_path / "COVID-19_Radiography_Dataset"
    for name in ("COVID-1", "COVID-2", "COVID-3"):
        _png(base / f"COVID/images/{name}.png")
    _png(base / "Normal/images/Normal-1.png")
    sheet = {
        "FILE NAME": ["COVID-1", "covid-2", "COVID-3", "COVID-9"],
        "FORMAT": "PNG",
        "SIZE": "299*299",
        "URL": ["https://sirm.org/category/covid-19/", "https://eurorad.org/?page=2#top", None, "https://x.org/a"],
    }
    pd.DataFrame(sheet).to_excel(base / "COVID.metadata.xlsx", index=False)
    pd.DataFrame({"FILE NAME": ["NORMAL-1"]}).to_excel(base / "Normal.metadata.xlsx", index=False)  # no URL column
    table, recon = read_layout(tmp_path)
    assert recon == {"matched": 2, "matched_case_insensitive": 2, "files_without_row": 0, "rows_without_file": 1}
    assert [(Path(p).name, s) for p, s in zip(table["path"], table["source"], strict=True)] == [
        ("COVID-1.png", "sirm.org/category/covid-19"),
        ("COVID-2.png", "eurorad.org"),
        ("COVID-3.png", ""),
        ("COVID-9.png", "x.org/a"),  # a row without a file keeps its source (validation rejects it)
        ("Normal-1.png", ""),
    ]


@pytest.mark.parametrize(
    ("url", "keep_path", "expected"),
    [
        (
            "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data",
            True,
            "kaggle.com/c/rsna-pneumonia-detection-challenge/data",
        ),
        ("https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data", False, "kaggle.com"),
        ("HTTP://WWW.EuroRad.org/case/123/?lang=en#figure-2", True, "eurorad.org/case/123"),
        (
            "https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/#1590858128006",
            True,
            "bimcv.cipf.es/bimcv-projects/bimcv-covid19",
        ),
        (
            "https://www.thelancet.com/journals/PIIS1473-3099(20)30111-0/fulltext",
            True,
            "thelancet.com/journals/PIIS1473-3099_20_30111-0/fulltext",
        ),
        ("sirm.org//a/./b/../c/", True, "sirm.org/a/b/c"),  # no empty, . or .. parts: MLflow would refuse the key
        (" https://user@host.org:8080/x ", False, "user_host.org_8080"),
        ("", True, ""),
    ],
)
def test_url_source(url, keep_path, expected):
    assert url_source(url, keep_path) == expected


def test_sources_name_mlflow_metrics(mlflow_store):
    """A real MLflow store takes every source above as part of a metric key (and refuses the raw URL)."""
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    run = client.create_run(client.create_experiment("sources")).info.run_id
    raw = "sirm.org//a/./b/../c/"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.log_metric(run, f"per_source.{raw}.n", 1)
    names = [url_source(raw), "thelancet.com/journals/PIIS1473-3099_20_30111-0/fulltext", "St. Mary_s _PA_"]
    for name in names:
        client.log_metric(run, f"per_source.{name}.n", 1)
    assert sorted(client.get_run(run).data.metrics) == sorted(f"per_source.{name}.n" for name in names)


def test_source_name_keeps_only_key_safe_characters():
    assert source_name("Hôpital Nord/ scanner 2 /./é:x") == "H_pital Nord/scanner 2/__x"


CUSTOM_CSV = """\
Image,Diagnosis,Patient ID,Age,Modality
a.png, Pneumonia ,p1,65,X-ray
missing.png,Normal,p2,,XRAY
C.PNG,Normal,p3,40,CR
ct.png,COVID,p4,50,CT
scan.nii.gz,COVID,p5,50,X-ray
e.png,,p6,30,dx
"""


def _custom_dataset(root: Path) -> Path:
    for name in ("a.png", "c.png", "ct.png", "e.png", "extra.png"):
        _png(root / "images" / name)
    return _write(root / "labels.csv", CUSTOM_CSV)


def test_csv_with_explicit_options_reconciles_files_and_rows(tmp_path):
    _custom_dataset(tmp_path)
    options = CsvOptions(metadata="labels.csv", file_column="image", label_column="DIAGNOSIS")
    assert detect_layout(tmp_path, options) == "csv"
    table, recon = read_layout(tmp_path, "csv", options)
    _check_columns(table)
    assert recon == {
        "matched": 2,  # a.png, e.png
        "matched_case_insensitive": 1,  # C.PNG -> c.png
        "files_without_row": 1,  # extra.png
        "rows_without_file": 1,  # missing.png: kept, validation rejects it later
        "rows_not_image": 1,  # scan.nii.gz
        "rows_other_modality": 1,  # ct.png
    }
    images = tmp_path / "images"
    assert table[["path", "source_label", "patient_id", "age"]].values.tolist() == [
        [(images / "a.png").as_posix(), "Pneumonia", "p1", "65"],
        [(images / "c.png").as_posix(), "Normal", "p3", "40"],
        [(images / "e.png").as_posix(), "", "p6", "30"],
        [(images / "missing.png").as_posix(), "Normal", "p2", ""],
    ]
    assert table["in_metadata"].eq(True).all()
    assert (table[["sex", "view", "mask_path", "source_split"]] == "").all().all()


def test_csv_auto_finds_the_table_in_a_wrapper_folder(tmp_path):
    _custom_dataset(tmp_path / "wrapper")
    _write(tmp_path / "wrapper/unrelated.csv", "name,value\nx,1\n")  # names no image: not a candidate
    options = CsvOptions(file_column="Image", label_column="Diagnosis")
    assert detect_layout(tmp_path, options) == "csv"
    table, recon = read_layout(tmp_path, csv=options)
    assert len(table) == 4 and recon["matched"] == 2
    assert all(p.startswith((tmp_path / "wrapper/images").as_posix()) for p in table["path"])


def test_two_qualifying_csvs_are_an_error_naming_the_key(tmp_path):
    _png(tmp_path / "images/a.png")
    _write(tmp_path / "one.csv", "filename,finding\na.png,X\n")
    _write(tmp_path / "two.csv", "FileName,finding\na.png,Y\n")
    with pytest.raises(UserError, match=r"one\.csv, two\.csv.*data\.csv\.metadata"):
        read_layout(tmp_path)
    table, _ = read_layout(tmp_path, csv=CsvOptions(metadata="two.csv"))
    assert list(table["source_label"]) == ["Y"]


def test_missing_label_column_is_an_error_naming_the_key(tmp_path):
    _png(tmp_path / "images/a.png")
    meta = _write(tmp_path / "metadata.csv", "filename,diagnosis\na.png,X\n")
    expected = r"metadata\.csv.*'finding'.*data\.csv\.label_column.*filename, diagnosis"
    with pytest.raises(UserError, match=expected) as err:
        read_layout(tmp_path)
    assert str(meta) in str(err.value)


def test_missing_file_column_is_an_error_naming_the_key(tmp_path):
    _png(tmp_path / "images/a.png")
    _write(tmp_path / "metadata.csv", "picture,finding\na.png,X\n")
    with pytest.raises(UserError, match=r"data\.csv\.file_column.*picture, finding"):
        read_layout(tmp_path, "csv", CsvOptions(metadata="metadata.csv"))


def test_unknown_layout_lists_the_expected_shapes(tmp_path):
    _write(tmp_path / "notes.txt", "no images here")
    expected = r"unknown dataset layout.*images.*train,test.*csv.*<class>.*set data\.layout or fix"
    with pytest.raises(UserError, match=expected):
        detect_layout(tmp_path)
    with pytest.raises(UserError, match="unknown dataset layout"):
        read_layout(tmp_path)


@pytest.mark.parametrize("layout", ["covid19-radiography", "covid19-image-dataset", "csv"])
def test_explicit_wrong_layout_names_the_folder(tmp_path, layout):
    _png(tmp_path / "cats/a.png")
    _png(tmp_path / "dogs/b.png")
    with pytest.raises(UserError, match=r"is data\.layout right") as err:
        read_layout(tmp_path, layout)
    assert str(tmp_path) in str(err.value)


def test_explicit_class_folders_on_an_empty_folder(tmp_path):
    with pytest.raises(UserError, match=r"no class folders.*is data\.layout right"):
        read_layout(tmp_path, "class-folders")
