"""Layout adapters: a dataset folder as shipped → the manifest, one row per image.

Manifest columns: ``path`` (relative to the working dir), ``label``, ``source_label``,
``mask_path`` (or empty), ``in_metadata`` (True/False where the source has metadata, else empty).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from chestxray.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RADIOGRAPHY_DIR = "COVID-19_Radiography_Dataset"
RADIOGRAPHY_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
LAYOUTS = ("covid19-radiography", "class-folders")


def detect_layout(root: Path) -> str:
    """Name the layout of ``root``, or fail naming what was expected."""
    if _radiography_root(root) is not None:
        return "covid19-radiography"
    if any(_images_under(d) for d in _subdirs(root)):
        return "class-folders"
    raise UserError(
        f"{root}: unknown dataset layout; expected {RADIOGRAPHY_DIR}/<Class>/images/*.png or "
        "<root>/<class>/**/*.png|jpg; set data.layout or fix the folder"
    )


def read_layout(root: Path, layout: str = "auto") -> tuple[pd.DataFrame, dict[str, int]]:
    """Return (manifest, metadata reconciliation counts) for ``root`` in ``layout``."""
    layout = detect_layout(root) if layout == "auto" else layout
    log.info("reading %s as layout '%s'", root, layout)
    if layout == "covid19-radiography":
        base = _radiography_root(root)
        if base is None:
            raise UserError(f"{root}: no {RADIOGRAPHY_DIR}/<Class>/images/ folders; is data.layout right?")
        return _read_radiography(base)
    return _read_class_folders(root), {}


def _read_radiography(base: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    rows, recon = [], {"matched": 0, "matched_case_insensitive": 0, "files_without_row": 0, "rows_without_file": 0}
    for cls in RADIOGRAPHY_CLASSES:
        images = sorted((base / cls / "images").glob("*"))
        images = [p for p in images if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            log.warning("%s: no images for class %s", base / cls / "images", cls)
        names = _metadata_names(base / f"{cls}.metadata.xlsx")
        lower = {n.lower() for n in names} if names is not None else set()
        for p in images:
            in_meta: bool | str = ""
            if names is not None:
                in_meta = p.stem in names or p.stem.lower() in lower
                if p.stem in names:
                    recon["matched"] += 1
                elif in_meta:
                    recon["matched_case_insensitive"] += 1
                else:
                    recon["files_without_row"] += 1
            mask = base / cls / "masks" / p.name
            rows.append((p.as_posix(), cls, cls, mask.as_posix() if mask.exists() else "", in_meta))
        if names is not None:
            stems = {p.stem.lower() for p in images}
            recon["rows_without_file"] += sum(n.lower() not in stems for n in names)
    return _frame(rows), recon


def _metadata_names(xlsx: Path) -> set[str] | None:
    """The ``FILE NAME`` column of a Kaggle ``<Class>.metadata.xlsx``, or None if there is none."""
    if not xlsx.exists():
        return None
    try:
        table = pd.read_excel(xlsx)
    except Exception as exc:
        raise UserError(f"{xlsx}: cannot read the metadata workbook ({exc}); re-download the dataset") from None
    if "FILE NAME" not in table.columns:
        raise UserError(f"{xlsx}: no 'FILE NAME' column (found {', '.join(map(str, table.columns))})")
    return set(table["FILE NAME"].dropna().astype(str).str.strip())


def _read_class_folders(root: Path) -> pd.DataFrame:
    rows = []
    for d in _subdirs(root):
        for p in _images_under(d):
            rows.append((p.as_posix(), d.name, d.name, "", ""))
    if not rows:
        raise UserError(f"{root}: no class folders with images (*.png, *.jpg, *.jpeg)")
    return _frame(rows)


def _radiography_root(root: Path) -> Path | None:
    for base in (root / RADIOGRAPHY_DIR, root):
        if any((base / cls / "images").is_dir() for cls in RADIOGRAPHY_CLASSES):
            return base
    return None


def _subdirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) if root.is_dir() else []


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def label_counts(table: pd.DataFrame, column: str = "label") -> dict[str, int]:
    """Rows per value of ``column``, sorted by value, as plain ints (JSON-ready)."""
    return {str(k): int(v) for k, v in table[column].value_counts().sort_index().items()}


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["path", "label", "source_label", "mask_path", "in_metadata"])
