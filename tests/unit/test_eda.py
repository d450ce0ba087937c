"""The EDA report on real image files: summary numbers, files written, the page, seeded grids, atomic writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.data import eda, images
from chestxray.data.eda import write_eda

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
PNGS = ["class_distribution.png", "grid_covid.png", "grid_normal.png", "grid_viral_pneumonia.png",
        "intensity.png", "sizes.png"]  # fmt: skip


def dataset(root: Path, sex: str = "", age: str = "") -> pd.DataFrame:
    """30 COVID PNGs, 7 Normal (one RGBA, one 16-bit PNG), 3 Viral Pneumonia JPEGs, no Lung_Opacity.

    Sizes differ per image; ``sex`` and ``age`` fill every row (empty: unknown).
    """
    rng = np.random.default_rng(0)
    rows = []
    for cls, n in (("COVID", 30), ("Normal", 7), ("Viral Pneumonia", 3)):
        for i in range(n):
            pixels = rng.integers(0, 256, (40 + i, 50 + 2 * i), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if cls == "Normal" and i == 0:
                image = image.convert("RGBA")
            if cls == "Normal" and i == 1:
                image = Image.fromarray(pixels.astype(np.uint16) * 257)
            path = root / f"{cls}-{i}.{'jpg' if cls == 'Viral Pneumonia' else 'png'}"
            image.save(path)
            rows.append({"path": str(path), "label": cls, "width": 50 + 2 * i, "height": 40 + i,
                         "mean": float(pixels.mean()), "std": float(pixels.std()), "sex": sex, "age": age})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every (path, size) the EDA decodes, through the real ``load_gray``."""
    calls: list[tuple[str, int]] = []

    def load_gray(path: Path, size: int) -> np.ndarray:
        calls.append((Path(path).name, size))
        return images.load_gray(path, size)

    monkeypatch.setattr(eda, "load_gray", load_gray)
    return calls


def test_summary_files_page_and_grid_samples(tmp_path, loads, caplog):
    table = dataset(tmp_path, sex="F", age="65")
    table.loc[::2, "sex"] = "M"
    table.loc[::3, "age"] = "?"  # junk: an unknown age
    out = tmp_path / "reports" / "eda"
    with caplog.at_level("INFO", logger="chestxray.data.eda"):
        summary = write_eda(table, CLASSES, out, seed=1)
    assert summary == {
        "images": 40,
        "counts": {"COVID": 30, "Lung_Opacity": 0, "Normal": 7, "Viral Pneumonia": 3},
        "shares": {"COVID": 0.75, "Lung_Opacity": 0.0, "Normal": 0.175, "Viral Pneumonia": 0.075},
        "imbalance": {
            "max_to_min": 10.0,
            "to_largest": {"COVID": 1.0, "Lung_Opacity": 0.0, "Normal": 0.233, "Viral Pneumonia": 0.1},
        },
        "demographics": True,
        "files": sorted([*PNGS, "demographics.png", "index.html"]),
    }
    assert sorted(p.name for p in out.iterdir()) == summary["files"]
    assert [p.name for p in out.parent.iterdir()] == ["eda"]  # no temp folder left beside it
    assert [r.getMessage() for r in caplog.records] == [f"EDA of 40 images (4 classes) written to {out}"]

    for name in [*PNGS, "demographics.png"]:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 250, (name, im.size)
    with Image.open(out / "grid_covid.png") as im:
        assert im.width >= 5 * 100 and im.height >= 5 * 100  # 5 × 5 cells

    # grids: 25 distinct of COVID's 30 images, all of the smaller classes, each decoded once at 128 px
    assert {size for _, size in loads} == {128}
    names = [name for name, _ in loads]
    assert len(names) == len(set(names)) == 25 + 7 + 3
    assert sum(name.startswith("COVID-") for name in names) == 25
    assert {n for n in names if not n.startswith("COVID-")} == {f"Normal-{i}.png" for i in range(7)} | {
        f"Viral Pneumonia-{i}.jpg" for i in range(3)
    }

    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<title>Dataset at a glance</title>" in page
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted([*PNGS, "demographics.png"])
    for row in ("<td>COVID</td><td>30</td><td>75.0%</td><td>1.000</td>",
                "<td>Lung_Opacity</td><td>0</td><td>0.0%</td><td>0.000</td>",
                "<td>Normal</td><td>7</td><td>17.5%</td><td>0.233</td>",
                "<td>Viral Pneumonia</td><td>3</td><td>7.5%</td><td>0.100</td>",
                "<th>Total</th><th>40</th>"):  # fmt: skip
        assert row in page
    assert "largest / smallest non-empty class: 10.000" in page
    assert "<h2>Random sample: Viral Pneumonia</h2>" in page and "<h2>Sex and age</h2>" in page
    assert "http" not in page.replace("<!doctype html>", "") and "<script" not in page


@pytest.mark.parametrize(("sex", "age", "expected"), [(" ", "?", False), ("", "65", True), ("other", "n/a", True)])
def test_demographics_only_when_a_sex_or_numeric_age_is_known(tmp_path, sex, age, expected):
    table = dataset(tmp_path, sex=sex, age=age).query("label == 'Viral Pneumonia'")  # 3 images: fast
    summary = write_eda(table, CLASSES, tmp_path / "eda", seed=0)
    assert summary["demographics"] is expected
    assert ("demographics.png" in summary["files"]) is expected
    assert (tmp_path / "eda/demographics.png").exists() is expected
    assert ('src="demographics.png"' in (tmp_path / "eda/index.html").read_text()) is expected
    assert summary["imbalance"]["max_to_min"] is None  # one non-empty class


def test_grids_are_seeded(tmp_path):
    table = dataset(tmp_path).query("label == 'COVID'")  # 30 images: the seed decides which 25 are drawn

    def grid(seed: int, name: str) -> np.ndarray:
        write_eda(table, CLASSES, tmp_path / name, seed)
        with Image.open(tmp_path / name / "grid_covid.png") as im:
            return np.asarray(im.convert("RGB"))

    first, again, other = grid(5, "a"), grid(5, "b"), grid(6, "c")
    assert not (tmp_path / "a/demographics.png").exists()  # no sex, no age
    assert np.array_equal(first, again)
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_a_failure_leaves_the_old_report_and_a_success_replaces_it(tmp_path):
    out = tmp_path / "reports" / "eda"
    out.mkdir(parents=True)
    (out / "sentinel").write_text("old")
    table = dataset(tmp_path).query("label == 'Viral Pneumonia'").reset_index(drop=True)
    broken = table.assign(path=[*table["path"][:2], str(tmp_path / "gone.png")])
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        write_eda(broken, CLASSES, out, seed=0)  # the grid shows all 3 images, the missing one too
    assert [p.name for p in out.iterdir()] == ["sentinel"] and (out / "sentinel").read_text() == "old"
    assert [p.name for p in out.parent.iterdir()] == ["eda"]

    summary = write_eda(table, CLASSES, out, seed=0)
    assert sorted(p.name for p in out.iterdir()) == summary["files"] and "sentinel" not in summary["files"]
    assert [p.name for p in out.parent.iterdir()] == ["eda"]


def test_an_empty_table_and_escaped_class_names(tmp_path):
    table = pd.DataFrame(columns=["path", "label", "width", "height", "mean", "std", "sex", "age"])
    summary = write_eda(table, ("<b>A&B</b>", "Viral Pneumonia"), tmp_path / "eda", seed=0)
    assert summary == {
        "images": 0,
        "counts": {"<b>A&B</b>": 0, "Viral Pneumonia": 0},
        "shares": {"<b>A&B</b>": 0.0, "Viral Pneumonia": 0.0},
        "imbalance": {"max_to_min": None, "to_largest": {"<b>A&B</b>": 0.0, "Viral Pneumonia": 0.0}},
        "demographics": False,
        "files": ["class_distribution.png", "index.html", "intensity.png", "sizes.png"],
    }
    page = (tmp_path / "eda/index.html").read_text()
    assert "<td>&lt;b&gt;A&amp;B&lt;/b&gt;</td><td>0</td>" in page and "<b>" not in page
    assert "n/a (fewer than 2 non-empty classes)" in page
