"""The dataset at a glance: class balance, random sample grids, image sizes, intensities, demographics.

The eda stage: ``explore_dataset`` reads the clean manifest (what validate measured, so no image is
decoded again but the few shown in the sample grids) and ``write_eda`` writes the PNG plots and one
``index.html`` embedding them into a folder, atomically; the folder goes to MLflow in an ``eda`` run.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from chestxray import paths, tracking
from chestxray.data.images import load_gray
from chestxray.data.labels import imbalance
from chestxray.figures import DPI, figure, save_figure
from chestxray.io import atomic_path

log = logging.getLogger(__name__)

GRID = 5  # each class's sample is a GRID × GRID grid
THUMB = 128  # px per grid image
GAP = 4  # px between grid images
UNKNOWN_SEX = "unknown"
BINS = 20  # per histogram, shared by its groups
TITLE = "Dataset at a glance"


def explore_dataset(seed: int, root: Path = Path(".")) -> dict[str, Any]:
    """The eda stage: the report of ``root``'s clean manifest in ``root/reports/eda``, and an ``eda``
    MLflow run holding it (``seed``, which draws the sample grids, is its one param)."""
    table = pd.read_csv(root / paths.MANIFEST_CSV, keep_default_na=False)
    out_dir = root / paths.EDA_DIR
    summary = write_eda(table, sorted(table["label"].unique()), out_dir, seed)
    with tracking.run(tags={"stage": "eda"}, name="eda"):
        tracking.log_params({"seed": seed})
        tracking.log_artifacts(out_dir, "eda")
    return summary


def write_eda(table: pd.DataFrame, classes: Sequence[str], out_dir: Path, seed: int) -> dict[str, Any]:
    """Write the EDA plots and one index.html embedding them into ``out_dir``, atomically; return the summary.

    ``table`` has one row per clean image (``path, label, width, height, mean, std, sex, age``);
    ``classes`` orders every plot, and a class without images is shown with 0. Grids are drawn
    with ``numpy.random.default_rng(seed)`` per class.
    """
    counts = {c: int((table["label"] == c).sum()) for c in classes}
    total = sum(counts.values())
    shares = {c: round(n / total, 4) if total else 0.0 for c, n in counts.items()}
    ratios = imbalance(counts)
    colours = {c: f"C{i}" for i, c in enumerate(classes)}
    demographics = _demographics(table)
    with atomic_path(out_dir, is_dir=True) as tmp:
        _plot_classes(counts, colours, tmp / "class_distribution.png")
        sections = [("Images per class", "class_distribution.png")]
        for cls in classes:
            rows = table[table["label"] == cls]
            if len(rows):
                name = f"grid_{_slug(cls)}.png"
                _plot_grid(rows, cls, seed, tmp / name)
                sections.append((f"Random sample: {cls}", name))
        sizes = {"width": ("Width by class", "pixels"), "height": ("Height by class", "pixels")}
        _plot_histograms(table, colours, sizes, tmp / "sizes.png")
        sections.append(("Image sizes", "sizes.png"))
        intensity = {
            "mean": ("Mean intensity per image, by class", "grey level (0–255)"),
            "std": ("Contrast: std of intensity per image, by class", "grey levels"),
        }
        _plot_histograms(table, colours, intensity, tmp / "intensity.png")
        sections.append(("Intensity and contrast", "intensity.png"))
        if demographics is not None:
            _plot_demographics(demographics, classes, colours, tmp / "demographics.png")
            sections.append(("Sex and age", "demographics.png"))
        (tmp / "index.html").write_text(_page(counts, shares, ratios, sections), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
    log.info("EDA of %d images (%d classes) written to %s", total, len(counts), out_dir)
    return {
        "images": total,
        "counts": counts,
        "shares": shares,
        "imbalance": ratios,
        "demographics": demographics is not None,
        "files": files,
    }


def _slug(name: str) -> str:
    """A file-name part: lower case, any character but a–z, 0–9 as ``_`` ('Viral Pneumonia' → 'viral_pneumonia')."""
    return re.sub(r"[^a-z0-9]", "_", name.lower())


def _demographics(table: pd.DataFrame) -> pd.DataFrame | None:
    """``label, sex, age`` per image (empty sex as "unknown", non-numeric age as NaN); None if none is known."""
    sex = table["sex"].fillna("").astype(str).str.strip()
    age = pd.to_numeric(table["age"], errors="coerce")
    age = age.where(np.isfinite(age))
    if (sex == "").all() and age.isna().all():
        return None
    return pd.DataFrame({"label": table["label"], "sex": sex.replace("", UNKNOWN_SEX), "age": age})


@contextlib.contextmanager
def _figure(path: Path, size: tuple[float, float], nrows: int = 1, ncols: int = 1) -> Iterator[np.ndarray]:
    """Yield the (nrows, ncols) axes of a new figure; save it as a PNG at ``path`` if the block succeeds."""
    fig, axes = figure(size, nrows, ncols)
    yield axes
    save_figure(fig, path)


def _plot_classes(counts: Mapping[str, int], colours: Mapping[str, str], path: Path) -> None:
    """Images per class: annotated bars (every class) and a pie of shares (the non-empty ones)."""
    with _figure(path, (12, 4.8), ncols=2) as ((bar, pie),):
        bars = bar.bar(list(counts), list(counts.values()), color=[colours[c] for c in counts])
        bar.bar_label(bars, padding=2)
        bar.set(title="Images per class", ylabel="Images")
        bar.margins(y=0.1)
        bar.tick_params(axis="x", rotation=20)
        present = {c: n for c, n in counts.items() if n}
        if present:
            pie.pie(
                list(present.values()),
                labels=list(present),
                colors=[colours[c] for c in present],
                autopct="%1.1f%%",
                startangle=90,
                counterclock=False,
            )
        else:
            _no_data(pie)
        pie.set(title="Share of images", aspect="equal")


def _plot_grid(rows: pd.DataFrame, cls: str, seed: int, path: Path) -> None:
    """A GRID × GRID mosaic of images drawn from ``rows`` without replacement (all of them if fewer)."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(rows), size=min(len(rows), GRID * GRID), replace=False))
    step = THUMB + GAP
    mosaic = np.full((GRID * step + GAP, GRID * step + GAP), np.nan)  # NaN: gutters and empty cells
    for cell, i in enumerate(picked):
        top, left = (GAP + step * k for k in divmod(cell, GRID))
        mosaic[top : top + THUMB, left : left + THUMB] = load_gray(Path(rows["path"].iloc[i]), THUMB)
    side = mosaic.shape[0] / DPI
    with _figure(path, (side, side + 0.4)) as ((ax,),):
        ax.imshow(
            np.ma.masked_invalid(mosaic), cmap=matplotlib.colormaps["gray"].with_extremes(bad="white"), vmin=0, vmax=255
        )
        ax.set_title(f"{cls}: {len(picked)} of {len(rows)} images, drawn at random (seed {seed})")
        ax.axis("off")


def _plot_histograms(
    table: pd.DataFrame, colours: Mapping[str, str], columns: Mapping[str, tuple[str, str]], path: Path
) -> None:
    """One panel per column (``columns``: its title and x label), one histogram per class of ``colours``."""
    with _figure(path, (6 * len(columns), 4.2), ncols=len(columns)) as (axes,):
        for ax, (column, labels) in zip(axes, columns.items(), strict=True):
            values = pd.to_numeric(table[column], errors="coerce")
            groups = {c: values[table["label"] == c].dropna() for c in colours}
            _histogram(ax, groups, colours, *labels)


def _plot_demographics(demo: pd.DataFrame, classes: Sequence[str], colours: Mapping[str, str], path: Path) -> None:
    """Sex per class (grouped bars), then age histograms by class and by sex."""
    with _figure(path, (17, 4.8), ncols=3) as ((by_sex, age_by_class, age_by_sex),):
        sexes = pd.crosstab(demo["label"], demo["sex"]).reindex(index=list(classes), fill_value=0)
        sex_colours = {s: matplotlib.colormaps["Dark2"](i % 8) for i, s in enumerate(sexes.columns)}
        sexes.plot.bar(ax=by_sex, rot=20, width=0.8, color=list(sex_colours.values()))
        by_sex.set(title="Sex per class", xlabel="", ylabel="Images")
        by_sex.legend(title="Sex", fontsize="small")
        by_class = {c: demo.loc[demo["label"] == c, "age"].dropna() for c in classes}
        _histogram(age_by_class, by_class, colours, "Age by class", "years")
        by_sex_ages = {s: demo.loc[demo["sex"] == s, "age"].dropna() for s in sexes.columns}
        _histogram(age_by_sex, by_sex_ages, sex_colours, "Age by sex", "years")


def _histogram(ax: Axes, groups: Mapping[str, pd.Series], colours: Mapping[str, Any], title: str, xlabel: str) -> None:
    """Histograms of the non-empty ``groups`` on shared bins, bars side by side; 'no data' if all are empty."""
    ax.set(title=title, xlabel=xlabel, ylabel="Images")
    groups = {name: values.to_numpy(float) for name, values in groups.items() if len(values)}
    if not groups:
        _no_data(ax)
        return
    pooled = np.concatenate(list(groups.values()))
    bins = np.histogram_bin_edges(pooled, bins=min(BINS, len(np.unique(pooled))))  # one bin if all are equal
    labels = [f"{name} (n={len(values):,})" for name, values in groups.items()]
    ax.hist(list(groups.values()), bins=bins, color=[colours[name] for name in groups], label=labels)
    if np.array_equal(pooled, np.round(pooled)):  # whole numbers (pixels, years): no fractional ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def _no_data(ax: Axes) -> None:
    """Mark an empty panel."""
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set(xticks=[], yticks=[])


def _page(
    counts: Mapping[str, int],
    shares: Mapping[str, float],
    ratios: Mapping[str, Any],
    sections: Sequence[tuple[str, str]],
) -> str:
    """The HTML page: counts, shares and ratios per class, the imbalance, then each plot under a heading."""
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{n:,}</td><td>{shares[c]:.1%}</td><td>{ratios['to_largest'][c]:.3f}</td></tr>\n"
        for c, n in counts.items()
    )
    total = sum(counts.values())
    max_to_min = ratios["max_to_min"]
    imbalance = "n/a (fewer than 2 non-empty classes)" if max_to_min is None else f"{max_to_min:.3f}"
    plots = "\n".join(
        f'<h2>{html.escape(heading)}</h2><p><img src="{html.escape(name)}" alt="{html.escape(heading)}"></p>'
        for heading, name in sections
    )
    return (
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{TITLE}</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:.3em .9em;text-align:right}td:first-child,th:first-child"
        "{text-align:left}img{max-width:100%}</style></head>\n"
        f"<body><h1>{TITLE}</h1>\n"
        f"<p>{total:,} clean images in {len(counts)} classes.</p>\n"
        "<table><tr><th>Class</th><th>Images</th><th>Share</th><th>Count / largest class</th></tr>\n"
        f"{rows}<tr><th>Total</th><th>{total:,}</th><th></th><th></th></tr></table>\n"
        f"<p>Imbalance, largest / smallest non-empty class: {imbalance}.</p>\n{plots}\n</body></html>\n"
    )
