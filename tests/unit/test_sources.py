"""data/raw from each source: synthetic, a local folder or zip (safely), Kaggle without credentials."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from chestxray import paths
from chestxray.data.sources import extract_zip, fetch_dataset
from chestxray.errors import UserError
from chestxray.io import read_json
from conftest import make_params


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_source_writes_the_layout_and_counts(tmp_path):
    data = make_params(**{"data.synthetic.n_images": 60}).data
    metrics = fetch_dataset(data, 3, tmp_path)
    written = files(tmp_path / paths.RAW_DIR)
    assert metrics == {"source": "synthetic", "files": len(written), "bytes": sum(map(len, written.values()))}
    assert read_json(tmp_path / paths.DOWNLOAD_JSON) == metrics
    assert read_json(tmp_path / paths.DOWNLOAD_METRICS) == {"source": "synthetic", "files": len(written)}  # headline
    assert sum(k.endswith(".png") and "/images/" in k for k in written) == 60
    assert [p.name for p in (tmp_path / paths.RAW_DIR).parent.iterdir()] == ["raw"]  # no temp left


def test_local_folder_and_zip_give_the_same_raw_data(raw_dataset, tmp_path):
    archive = tmp_path / "dataset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in raw_dataset.rglob("*"):
            zf.write(p, p.relative_to(raw_dataset).as_posix())
    for name, path in (("folder", raw_dataset), ("zip", archive)):
        data = make_params(**{"data.source": "local", "data.local.path": str(path)}).data
        assert fetch_dataset(data, 0, tmp_path / name)["name"] == path.name  # the dataset the model names
    raw = paths.RAW_DIR
    assert files(tmp_path / "folder" / raw) == files(tmp_path / "zip" / raw) == files(raw_dataset)


def test_missing_local_path_keeps_existing_raw_data(tmp_path):
    raw = tmp_path / paths.RAW_DIR
    raw.mkdir(parents=True)
    (raw / "keep.png").write_bytes(b"old")
    data = make_params(**{"data.source": "local", "data.local.path": str(tmp_path / "nope")}).data
    with pytest.raises(UserError, match=r"data.local.path: .*nope does not exist"):
        fetch_dataset(data, 0, tmp_path)
    assert files(raw) == {"keep.png": b"old"}
    assert not (tmp_path / paths.DOWNLOAD_JSON).exists() and not (tmp_path / paths.DOWNLOAD_METRICS).exists()


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png", "a/../../evil.png"])
def test_zip_slip_is_refused_and_nothing_is_written(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/Normal-1.png", b"fine")
        zf.writestr(member, b"evil")
    dest = tmp_path / "deep" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(UserError, match="unsafe member"):
        extract_zip(archive, dest)
    assert list(dest.iterdir()) == [] and not list(tmp_path.rglob("evil.png"))


def test_corrupt_zip_is_named(tmp_path):
    archive = tmp_path / "cut.zip"
    archive.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match=r"cut.zip: not a valid zip archive"):
        extract_zip(archive, tmp_path / "dest")
