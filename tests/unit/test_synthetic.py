"""Tests for the synthetic Kaggle-layout chest X-ray generator."""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__
from PIL import Image, features
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from chestxray.data import synthetic
from chestxray.data.radiography import CLASSES
from chestxray.data.synthetic import generate
from chestxray.errors import UserError

N = 120
SEED = 7
# Tree digests (sha256 over the sorted relative paths and each file's sha256) of generate(root, N, seed). The
# pixels are CPU-independent; the PNG and xlsx bytes also depend on the zlib that deflates them (see _zlib).
DIGEST_SMALL = "a64d2c59249ac765e9f53f688aee0d5cc72a659596c25f800ce0e744a0cf86d2"  # N, SEED
DIGEST_DEFAULT = "9a6a53201a0bbba957f3c9889283e6df9e7f3ffcf093f2b858e82cb6aa28ce0e"  # 1000, 42: what dvc repro makes
REAL = {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345}


def _largest_remainder(n: int) -> dict[str, int]:
    """Independent oracle: exact fractions, remainders broken by class order."""
    total = sum(REAL.values())
    quotas = {c: Fraction(n * REAL[c], total) for c in CLASSES}
    counts = {c: int(q) for c, q in quotas.items()}
    order = sorted(CLASSES, key=lambda c: (-(quotas[c] - counts[c]), CLASSES.index(c)))
    for c in order[: n - sum(counts.values())]:
        counts[c] += 1
    return counts


def _make(root: Path, n: int, seed: int) -> tuple[Path, dict[str, int]]:
    root.mkdir(parents=True, exist_ok=True)
    counts = generate(root, n, seed)
    return root / "COVID-19_Radiography_Dataset", counts


def _hashes(base: Path) -> dict[str, str]:
    return {
        p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*"))
        if p.is_file()
    }


def _tree_digest(base: Path) -> str:
    digest = hashlib.sha256()
    for name, file_hash in _hashes(base).items():
        digest.update(name.encode() + b"\0" + bytes.fromhex(file_hash))
    return digest.hexdigest()


def _zlib() -> str:
    import zlib

    return f"zlib {zlib.ZLIB_RUNTIME_VERSION} (Python), {features.version('zlib')} (Pillow)"


def _features(base: Path, side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for k, cls in enumerate(CLASSES):
        for path in sorted((base / cls / "images").glob("*.png")):
            small = Image.open(path).resize((side, side), Image.Resampling.BOX)
            rows.append(np.asarray(small, dtype=np.float32).ravel() / 255.0)
            labels.append(k)
    return np.array(rows), np.array(labels)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    return _make(tmp_path_factory.mktemp("a"), N, SEED)


def test_counts_follow_real_shares_by_largest_remainder(dataset: tuple[Path, dict[str, int]]) -> None:
    _, counts = dataset
    assert counts == _largest_remainder(N) == {"COVID": 20, "Lung_Opacity": 34, "Normal": 58, "Viral Pneumonia": 8}
    assert synthetic._class_counts(1000) == {"COVID": 171, "Lung_Opacity": 284, "Normal": 482, "Viral Pneumonia": 63}
    for n in range(40, 1500, 7):
        got = synthetic._class_counts(n)
        assert got == _largest_remainder(n) and sum(got.values()) == n and min(got.values()) >= 1


def test_rejects_too_few_images(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        generate(tmp_path, 39, SEED)
    assert str(err.value) == "params.yaml: data.synthetic.n_images must be at least 40, got 39"


def test_exact_tree_and_names(dataset: tuple[Path, dict[str, int]]) -> None:
    base, counts = dataset
    expected = {"README.md.txt"} | {f"{c}.metadata.xlsx" for c in CLASSES}
    for cls in CLASSES:
        for sub in ("images", "masks"):
            expected |= {f"{cls}/{sub}/{cls}-{n}.png" for n in range(1, counts[cls] + 1)}
    assert set(_hashes(base)) == expected
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == sorted(CLASSES)
    assert [p.name for p in base.parent.iterdir()] == ["COVID-19_Radiography_Dataset"]
    assert (base / "Viral Pneumonia" / "images" / "Viral Pneumonia-1.png").is_file()
    assert not (base / "COVID" / "images" / "COVID-01.png").exists()


def test_readme_says_synthetic(dataset: tuple[Path, dict[str, int]]) -> None:
    base, counts = dataset
    text = (base / "README.md.txt").read_text(encoding="utf-8")
    assert "SYNTHETIC" in text and "chestxray" in text and f"seed {SEED}" in text
    assert "Kaggle" in text and f"{N} images" in text
    for cls in CLASSES:
        assert f"{counts[cls]} {cls} images" in text


def test_images_and_masks_formats(dataset: tuple[Path, dict[str, int]]) -> None:
    base, _ = dataset
    for cls in CLASSES:
        for path in sorted((base / cls / "images").glob("*.png")):
            with Image.open(path) as img:
                assert (img.format, img.mode, img.size) == ("PNG", "L", (299, 299))
                pixels = np.asarray(img)
            assert 20 < pixels.mean() < 235 and pixels.std() > 20
            with Image.open(base / cls / "masks" / path.name) as mask:
                assert (mask.format, mask.mode, mask.size) == ("PNG", "RGB", (256, 256))
                m = np.asarray(mask)
            assert set(np.unique(m)) == {0, 255}
            assert (m[..., 0] == m[..., 1]).all() and (m[..., 0] == m[..., 2]).all()
            lung_fraction = (m[..., 0] == 255).mean()
            assert 0.08 < lung_fraction < 0.5
            # both lungs: lit pixels on each side of the midline
            assert m[:, :128, 0].any() and m[:, 128:, 0].any()


def test_metadata_reconciles_with_files(dataset: tuple[Path, dict[str, int]]) -> None:
    base, counts = dataset
    urls = set()
    for cls in CLASSES:
        path = base / f"{cls}.metadata.xlsx"
        with pd.ExcelFile(path, engine="openpyxl") as book:
            assert len(book.sheet_names) == 1
            sheet = book.parse(book.sheet_names[0], dtype=str)
        assert list(sheet.columns) == ["FILE NAME", "FORMAT", "SIZE", "URL"]
        assert len(sheet) == counts[cls]
        assert (sheet["FORMAT"] == "PNG").all() and (sheet["SIZE"] == "299*299").all()
        assert sheet["URL"].nunique() == 1 and sheet["URL"].iloc[0].startswith("https://")
        urls.add((cls, sheet["URL"].iloc[0]))
        names = list(sheet["FILE NAME"])
        assert not any(n.lower().endswith(".png") for n in names)
        prefix = "NORMAL" if cls == "Normal" else cls
        assert names == [f"{prefix}-{n}" for n in range(1, counts[cls] + 1)]
        files = sorted(p.stem.casefold() for p in (base / cls / "images").glob("*.png"))
        assert sorted(n.casefold() for n in names) == files
        assert len(set(files)) == len(names)
    by_class = dict(urls)
    assert by_class["Normal"] == by_class["Lung_Opacity"] != by_class["COVID"]
    assert "rsna" in by_class["Normal"] and "chest-xray-pneumonia" in by_class["Viral Pneumonia"]


def test_xlsx_timestamps_are_fixed(dataset: tuple[Path, dict[str, int]]) -> None:
    base, _ = dataset
    today = datetime.date.today()
    for cls in CLASSES:
        with zipfile.ZipFile(base / f"{cls}.metadata.xlsx") as archive:
            stamps = {info.date_time for info in archive.infolist()}
            core = archive.read("docProps/core.xml").decode()
        assert len(stamps) == 1 and next(iter(stamps))[:3] != (today.year, today.month, today.day)
        assert today.isoformat() not in core and "2021-03-06T00:00:00Z" in core


def test_same_seed_is_byte_identical_other_seed_differs(dataset: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    base, _ = dataset
    first = _hashes(base)
    again, _ = _make(tmp_path / "same", N, SEED)
    assert _hashes(again) == first
    other, _ = _make(tmp_path / "other", N, SEED + 1)
    other_hashes = _hashes(other)
    assert other_hashes.keys() == first.keys()
    images = [k for k in first if "/images/" in k]
    assert all(other_hashes[k] != first[k] for k in images)
    assert all(other_hashes[k] == first[k] for k in first if k.endswith(".xlsx"))


def test_class_signal_generalises_across_seeds(dataset: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    train_base, _ = _make(tmp_path / "train", 400, SEED + 100)
    x_train, y_train = _features(train_base)
    x_test, y_test = _features(dataset[0])
    model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x_train, y_train)
    predicted = model.predict(x_test)
    assert f1_score(y_test, predicted, average="macro") > 0.5
    viral = CLASSES.index("Viral Pneumonia")
    assert (predicted[y_test == viral] == viral).mean() >= 0.5


def test_small_dataset_matches_committed_digest(dataset: tuple[Path, dict[str, int]]) -> None:
    assert _tree_digest(dataset[0]) == DIGEST_SMALL, f"pixels or deflate changed; this machine has {_zlib()}"


def test_default_dataset_matches_committed_digest(tmp_path: Path) -> None:
    base, counts = _make(tmp_path, 1000, 42)
    assert counts == {"COVID": 171, "Lung_Opacity": 284, "Normal": 482, "Viral Pneumonia": 63}
    assert _tree_digest(base) == DIGEST_DEFAULT, f"pixels or deflate changed; this machine has {_zlib()}"


def test_same_digest_with_numpy_simd_disabled(tmp_path: Path) -> None:
    # Every SIMD extension NumPy dispatches to at run time on this CPU (not its compiled-in baseline).
    simd = [f for f in __cpu_dispatch__ if __cpu_features__.get(f) and f not in __cpu_baseline__]
    if not simd:
        pytest.skip("this CPU offers NumPy no SIMD extension beyond its baseline")
    code = (
        "import sys; from pathlib import Path; from chestxray.data.synthetic import generate\n"
        "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
        "print(sorted(k for k in sys.argv[2:] if f[k]))\n"
        f"generate(Path(sys.argv[1]), {N}, {SEED})"
    )
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(simd)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), *simd], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"  # the child really ran without them
    assert _tree_digest(tmp_path / "COVID-19_Radiography_Dataset") == DIGEST_SMALL
