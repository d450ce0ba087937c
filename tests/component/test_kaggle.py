"""The real ``kaggle`` client against a Kaggle stand-in on 127.0.0.1 (Kaggle itself is
unreachable from the test machines): download, resume after a cut, and every refusal."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chestxray import paths
from chestxray.data.layouts import detect_layout, read_layout
from chestxray.data.sources import download_kaggle
from chestxray.errors import UserError
from conftest import KAGGLE_CONFIG_DIR, REPO, zip_tree
from kaggle_server import KEY, SLUG, TOKEN, USER, KaggleStub


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A home with no ~/.kaggle, no kaggle.json and no credentials in the environment."""
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_API_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    yield home
    (KAGGLE_CONFIG_DIR / "kaggle.json").unlink(missing_ok=True)


@pytest.fixture
def kaggle(radiography_zip: bytes, no_credentials: Path, monkeypatch: pytest.MonkeyPatch):
    """The stand-in server, with KAGGLE_API_ENDPOINT pointing at it and key credentials set."""
    with KaggleStub({SLUG: radiography_zip}, USER, KEY, token=TOKEN) as stub:
        monkeypatch.setenv("KAGGLE_API_ENDPOINT", stub.url)
        monkeypatch.setenv("KAGGLE_USERNAME", USER)
        monkeypatch.setenv("KAGGLE_KEY", KEY)
        yield stub


def download_stage(work: Path) -> subprocess.CompletedProcess:
    """The real download stage script, as DVC runs it, in ``work`` with the project's params and
    ``data.source: kaggle``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = "kaggle"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(REPO / "stages/download.py")]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, check=False)


def test_download_stage_output_is_the_sample_byte_for_byte(kaggle, radiography_zip, radiography_sample, tmp_path):
    """The real stage script, as DVC runs it: data/raw equals the sample; metrics name the
    slug, version, size and sha256; the key appears in no output and no written file."""
    work = tmp_path / "work"
    work.mkdir()
    done = download_stage(work)
    assert done.returncode == 0, done.stderr
    assert files(work / "data/raw") == files(radiography_sample)
    metrics = json.loads((work / paths.DOWNLOAD_JSON).read_text())  # the record: the headline has no slug
    assert metrics["slug"] == SLUG and metrics["version"] == 7
    assert metrics["size"] == len(radiography_zip) and metrics["sha256"] == hashlib.sha256(radiography_zip).hexdigest()
    assert metrics["files"] == len(files(radiography_sample))
    assert "100%" in done.stderr  # the client's progress bar
    assert list((work / "data/downloads").iterdir()) == []  # the archive is removed once extracted
    written = b"".join(p.read_bytes() for p in work.rglob("*") if p.is_file())
    for secret in (KEY, "Basic "):
        assert secret not in done.stdout + done.stderr and secret.encode() not in written


@pytest.mark.parametrize("how", ["kaggle.json", "KAGGLE_API_TOKEN"])
def test_other_credential_sources(kaggle, no_credentials, monkeypatch, tmp_path, how):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    if how == "kaggle.json":
        (KAGGLE_CONFIG_DIR / "kaggle.json").write_text(json.dumps({"username": USER, "key": KEY}))
    else:
        monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    origin = download_kaggle(SLUG, tmp_path / "raw", tmp_path / "downloads")
    assert origin["version"] == 7
    auth = {c[2].get("Authorization") for c in kaggle.calls if c[1].endswith("DownloadDataset")}
    assert auth == ({f"Bearer {TOKEN}"} if how == "KAGGLE_API_TOKEN" else {kaggle.basic})


def test_the_other_kaggle_dataset_arrives_in_its_own_layout(kaggle, shared, tmp_path):
    """pranavraikokte/covid19-image-dataset, served as Kaggle zips it: Covid19-dataset/… inside."""
    sample = shared / "data/covid19-image-dataset-sample"
    kaggle.datasets["pranavraikokte/covid19-image-dataset"] = zip_tree(sample / "Covid19-dataset", sample)
    download_kaggle("pranavraikokte/covid19-image-dataset", tmp_path / "raw", tmp_path / "downloads")
    assert detect_layout(tmp_path / "raw") == "covid19-image-dataset"
    table, _ = read_layout(tmp_path / "raw")
    assert len(table) == 36 and set(table["source_split"]) == {"train", "test"}


def test_a_complete_download_is_reused_not_fetched_again(kaggle, radiography_zip, radiography_sample, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "tawsifurrahman--covid19-radiography-database--v7.zip").write_bytes(radiography_zip)
    download_kaggle(SLUG, tmp_path / "raw", downloads)
    assert [c[1] for c in kaggle.calls] == ["/v1/datasets.DatasetApiService/GetDataset"]
    assert files(tmp_path / "raw") == files(radiography_sample) and list(downloads.iterdir()) == []


def test_a_pinned_version_is_downloaded_as_asked(kaggle, tmp_path):
    origin = download_kaggle(f"{SLUG}/versions/3", tmp_path / "raw", tmp_path / "downloads")
    assert origin["version"] == 3
    assert [c[1] for c in kaggle.calls] == [
        "/v1/datasets.DatasetApiService/DownloadDataset",
        f"/files/{SLUG}/3/archive.zip",
    ]


def test_a_cut_download_fails_clearly_and_the_next_run_resumes(kaggle, radiography_sample, tmp_path):
    kaggle.mode = "cut"
    dest, downloads = tmp_path / "raw", tmp_path / "downloads"
    dest.mkdir()
    with pytest.raises(
        UserError, match=r"'tawsifurrahman/covid19-radiography-database' was cut .* the next run resumes"
    ):
        download_kaggle(SLUG, dest, downloads, retries=0)
    assert list(dest.iterdir()) == []
    (partial,) = downloads.glob("*.zip.part")
    kept = partial.stat().st_size
    assert 0 < kept < len(kaggle.datasets[SLUG])
    download_kaggle(SLUG, dest, downloads, retries=0)
    ranges = [c[2].get("Range") for c in kaggle.calls if c[0] == "GET"]
    assert ranges[-1] == f"bytes={kept}-"  # resumed, not restarted
    assert files(dest) == files(radiography_sample)
    assert list(downloads.iterdir()) == []


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("401", r"Kaggle refused the credentials \(HTTP 401\).*KAGGLE_USERNAME and KAGGLE_KEY"),
        ("403", r"denied access to 'tawsifurrahman/covid19-radiography-database' \(HTTP 403\): .*accept its terms"),
        (
            "404",
            r"dataset 'tawsifurrahman/covid19-radiography-database' not found \(HTTP 404\); set data.kaggle.dataset",
        ),
        ("corrupt", r"member '.*\.png' is corrupt; it was deleted, so the next run downloads it afresh"),
        ("truncated", r"not a valid zip archive .*; it was deleted, so the next run downloads it afresh"),
    ],
)
def test_refusals_and_bad_archives_are_one_clear_error(kaggle, tmp_path, mode, message):
    kaggle.mode = mode
    dest = tmp_path / "raw"
    dest.mkdir()
    with pytest.raises(UserError, match=message) as caught:
        download_kaggle(SLUG, dest, tmp_path / "downloads")
    assert KEY not in str(caught.value)
    assert list(dest.iterdir()) == [] and list((tmp_path / "downloads").iterdir()) == []


def test_unknown_dataset_is_a_404(kaggle, tmp_path):
    with pytest.raises(UserError, match=r"dataset 'nobody/nothing' not found \(HTTP 404\)"):
        download_kaggle("nobody/nothing", tmp_path / "raw", tmp_path / "downloads")


def test_connection_refused_is_named(no_credentials, monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KAGGLE_API_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    with pytest.raises(UserError, match=rf"cannot reach the Kaggle API at http://127.0.0.1:{port} \(ConnectionError\)"):
        download_kaggle(SLUG, tmp_path / "raw", tmp_path / "downloads")


def test_without_credentials_the_stage_prints_only_its_own_line(no_credentials, tmp_path):
    """The real client, in the real stage script: importing it and authenticating print its own
    18-line sign-in help (`kaggle auth login`, ~/.kaggle/access_token) and call exit(1); only the
    project's line, naming kaggle.json, may show."""
    done = download_stage(tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.split(" ERROR ", 1)[1] == (
        "download: Kaggle credentials not found: save kaggle.json (from https://www.kaggle.com/settings, 'Create New"
        " Token') in ~/.kaggle/ (or $KAGGLE_CONFIG_DIR), or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN;"
        " or use data.source: synthetic"
    )
    assert not (tmp_path / "data/raw").exists()


@pytest.mark.parametrize("dataset", ["justaslug", "a/b/c/d", "owner/slug/latest", "/slug"])
def test_malformed_dataset_names_are_refused_before_any_call(no_credentials, tmp_path, dataset):
    with pytest.raises(UserError, match=r"data.kaggle.dataset: .* is not 'owner/slug'"):
        download_kaggle(dataset, tmp_path / "raw", tmp_path / "downloads")


def test_endpoint_must_be_a_url(no_credentials, monkeypatch, tmp_path):
    monkeypatch.setenv("KAGGLE_API_ENDPOINT", "127.0.0.1:9")
    with pytest.raises(UserError, match=r"KAGGLE_API_ENDPOINT='127.0.0.1:9' is not an http\(s\) URL"):
        download_kaggle(SLUG, tmp_path / "raw", tmp_path / "downloads")
