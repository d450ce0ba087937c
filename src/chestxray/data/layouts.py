"""Layout adapters: a dataset folder as shipped → one unified table, one row per image.

Columns (``COLUMNS``): ``path`` (built from the root given, so relative roots stay relative),
``source_label`` (the label as the source writes it), ``patient_id``, ``sex``, ``age``, ``view``,
``mask_path``, ``source_split`` (strings, empty where the source has none) and ``in_metadata``
(True/False where the source has per-image metadata, else empty). ``chestxray.data.labels`` maps
``source_label`` to the task's label later.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from chestxray.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RADIOGRAPHY_DIR = "COVID-19_Radiography_Dataset"
RADIOGRAPHY_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
IMAGE_DATASET_DIR = "Covid19-dataset"
IMAGE_DATASET_SPLITS = ("train", "test")
LAYOUTS = ("covid19-radiography", "covid19-image-dataset", "class-folders", "csv")
COLUMNS = ("path", "source_label", "patient_id", "sex", "age", "view", "mask_path", "source_split", "in_metadata")
FILE_COLUMNS = ("filename", "imagename", "file_name", "file", "path", "image")
OPTIONAL_COLUMNS = {
    "patient_id": ("patientid", "patient_id", "patient id"),
    "sex": ("sex",),
    "age": ("age",),
    "view": ("view",),
}
XRAY_MODALITIES = ("xray", "cr", "dx")
RECONCILIATION = ("matched", "matched_case_insensitive", "files_without_row", "rows_without_file")


@dataclass(frozen=True)
class CsvOptions:
    """How to read a ``csv`` layout (params ``data.csv``): which table, which columns."""

    metadata: str = "auto"  # the CSV's path inside the dataset; auto = the one *.csv that names images
    file_column: str = "auto"  # auto = the first of FILE_COLUMNS present
    label_column: str = "finding"


def detect_layout(root: Path, csv: CsvOptions = CsvOptions()) -> str:
    """Name the layout of ``root``, or fail naming what was expected."""
    if _radiography_root(root) is not None:
        return "covid19-radiography"
    if _image_dataset_root(root) is not None:
        return "covid19-image-dataset"
    if _has_csv(root, csv):
        return "csv"
    if any(_has_images(d) for d in _subdirs(_class_root(root))):
        return "class-folders"
    raise UserError(
        f"{root}: unknown dataset layout; expected {RADIOGRAPHY_DIR}/<Class>/images/*.png, "
        f"[{IMAGE_DATASET_DIR}/]{{train,test}}/<class>/*.png|jpg, a metadata *.csv naming images/<file>, or "
        "<root>/<class>/**/*.png|jpg; set data.layout or fix the folder"
    )


def read_layout(
    root: Path, layout: str = "auto", csv: CsvOptions = CsvOptions()
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Return (table with ``COLUMNS``, metadata reconciliation counts; {} without metadata) for ``root``."""
    layout = detect_layout(root, csv) if layout == "auto" else layout
    log.info("reading %s as layout '%s'", root, layout)
    if layout == "covid19-radiography":
        base = _radiography_root(root)
        if base is None:
            raise UserError(f"{root}: no {RADIOGRAPHY_DIR}/<Class>/images/ folders; is data.layout right?")
        return _read_radiography(base)
    if layout == "covid19-image-dataset":
        base = _image_dataset_root(root)
        if base is None:
            raise UserError(f"{root}: no [{IMAGE_DATASET_DIR}/]{{train,test}}/<class>/ images; is data.layout right?")
        return _read_image_dataset(base), {}
    if layout == "csv":
        return _read_csv(root, csv)
    if layout == "class-folders":
        return _read_class_folders(root), {}
    raise UserError(f"{root}: unknown data.layout '{layout}'; use one of auto, {', '.join(LAYOUTS)}")


def label_counts(table: pd.DataFrame, column: str = "label") -> dict[str, int]:
    """Rows per value of ``column``, sorted by value, as plain ints (JSON-ready)."""
    return {str(k): int(v) for k, v in table[column].value_counts().sort_index().items()}


# --- covid19-radiography -------------------------------------------------------------------


def _read_radiography(base: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    rows, recon, has_metadata = [], dict.fromkeys(RECONCILIATION, 0), False
    for cls in RADIOGRAPHY_CLASSES:
        folder = base / cls / "images"
        images = [p for p in sorted(folder.glob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            log.warning(
                "%s: class %s has no images (the folder is %s)", folder, cls, "empty" if folder.is_dir() else "missing"
            )
        names = _metadata_names(base / f"{cls}.metadata.xlsx")
        has_metadata |= names is not None
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
            rows.append(_row(p, cls, mask_path=mask.as_posix() if mask.exists() else "", in_metadata=in_meta))
        if (
            names is not None and images
        ):  # rows without a file are kept, so that validation rejects them as missing_file
            stems = {p.stem.lower() for p in images}
            for name in sorted(n for n in names if n.lower() not in stems):
                recon["rows_without_file"] += 1
                rows.append(_row(base / cls / "images" / f"{name}.png", cls, in_metadata=True))
    return _frame(rows), recon if has_metadata else {}


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


def _radiography_root(root: Path) -> Path | None:
    for base in (root / RADIOGRAPHY_DIR, root):
        if any((base / cls / "images").is_dir() for cls in RADIOGRAPHY_CLASSES):
            return base
    return None


# --- covid19-image-dataset -----------------------------------------------------------------


def _read_image_dataset(base: Path) -> pd.DataFrame:
    ignored = [d.name for d in _subdirs(base) if d.name not in IMAGE_DATASET_SPLITS]
    if ignored:
        log.warning("%s: ignoring folders %s (only %s are read)", base, ignored, IMAGE_DATASET_SPLITS)
    rows = [
        _row(p, d.name, source_split=split)
        for split in IMAGE_DATASET_SPLITS
        for d in _subdirs(base / split)
        for p in _images_under(d)
    ]
    return _frame(rows)


def _image_dataset_root(root: Path) -> Path | None:
    """``root/Covid19-dataset`` or ``root`` if it holds train/ and/or test/, each with class folders of images."""
    for base in (root / IMAGE_DATASET_DIR, root):
        splits = [base / s for s in IMAGE_DATASET_SPLITS if (base / s).is_dir()]
        if splits and all(any(_has_images(d) for d in _subdirs(s)) for s in splits):
            return base
    return None


# --- class-folders -------------------------------------------------------------------------


def _read_class_folders(root: Path) -> pd.DataFrame:
    rows = [_row(p, d.name) for d in _subdirs(_class_root(root)) for p in _images_under(d)]
    if not rows:
        raise UserError(f"{root}: no class folders with images (*.png, *.jpg, *.jpeg); is data.layout right?")
    return _frame(rows)


def _class_root(root: Path) -> Path:
    """``root``, or the single wrapper folder (as zips make: ``mydata/<class>/...``) holding the classes."""
    while (inner := _single_subdir(root)) is not None and not _images_in(inner):
        if not any(_has_images(d) for d in _subdirs(inner)):
            break
        root = inner
    return root


# --- csv -----------------------------------------------------------------------------------


def _read_csv(root: Path, options: CsvOptions) -> tuple[pd.DataFrame, dict[str, int]]:
    meta = _metadata_csv(root, options)
    table = _read_table(meta)
    file_col = _file_column(table, meta, options)
    label_col = _column(table, options.label_column)
    if label_col is None:
        raise UserError(
            f"{meta}: no column '{options.label_column}' (data.csv.label_column); "
            f"found {_found(table)}; set data.csv.label_column"
        )
    optional = {key: _first_column(table, names) for key, names in OPTIONAL_COLUMNS.items()}
    folder_col, modality_col = _column(table, "folder"), _column(table, "modality")
    recon = dict.fromkeys((*RECONCILIATION, "rows_not_image", "rows_other_modality"), 0)
    listings: dict[Path, dict[str, Path]] = {}
    named: set[Path] = set()
    rows = []
    for rec in table.to_dict("records"):
        file = rec[file_col].strip()
        if Path(file).suffix.lower() not in IMAGE_SUFFIXES:
            recon["rows_not_image"] += 1
            continue
        folder = rec[folder_col].strip() if folder_col else ""
        path, how = _resolve(meta.parent, folder, file, listings)
        named.add(path)
        if modality_col and not _is_xray(rec[modality_col]):
            recon["rows_other_modality"] += 1
            continue
        recon[how] += 1
        fields = {key: rec[col].strip() for key, col in optional.items() if col}
        rows.append(_row(path, rec[label_col].strip(), in_metadata=True, **fields))
    folders = {p.parent for p in named}
    recon["files_without_row"] = sum(p not in named for d in folders for p in _images_in(d))
    skipped = recon["rows_not_image"], recon["rows_other_modality"]
    if any(skipped):
        log.info("%s: skipped %d non-image and %d non-X-ray rows", meta, *skipped)
    return _frame(rows), recon


def _resolve(base: Path, folder: str, file: str, listings: dict[Path, dict[str, Path]]) -> tuple[Path, str]:
    """(path of ``file``, which reconciliation count it adds to): exact, else ignoring case, else missing."""
    candidates = [base / folder / file] if folder else [base / file, base / "images" / file]
    for path in candidates:
        if path.is_file():
            return path, "matched"
    for path in candidates:
        if path.parent not in listings:
            listings[path.parent] = {p.name.lower(): p for p in _images_in(path.parent)}
        if (found := listings[path.parent].get(path.name.lower())) is not None:
            return found, "matched_case_insensitive"
    # missing: where it would be, preferring the most specific candidate whose folder exists
    would_be = next((p for p in reversed(candidates) if p.parent.is_dir()), candidates[0])
    return would_be, "rows_without_file"


def _metadata_csv(root: Path, options: CsvOptions) -> Path:
    if options.metadata != "auto":
        meta = root / options.metadata
        if not meta.is_file():
            raise UserError(f"{meta}: metadata CSV not found; fix data.csv.metadata (a path inside {root})")
        return meta
    found = _csv_candidates(root, options)
    if len(found) == 1:
        return found[0]
    if not found:
        seen = [p.relative_to(root).as_posix() for d in _csv_dirs(root) for p in _csvs_in(d)]
        raise UserError(
            f"{root}: no *.csv names existing images (found: {', '.join(seen) or 'none'}); "
            "is data.layout right? Else set data.csv.metadata and data.csv.file_column"
        )
    names = ", ".join(p.relative_to(root).as_posix() for p in found)
    raise UserError(f"{root}: {len(found)} CSVs name images ({names}); set data.csv.metadata to the one to use")


def _has_csv(root: Path, options: CsvOptions) -> bool:
    if options.metadata != "auto":
        return (root / options.metadata).is_file()
    return bool(_csv_candidates(root, options))


def _csv_candidates(root: Path, options: CsvOptions) -> list[Path]:
    """The *.csv in ``root`` (else in its single wrapper folder) whose file column names an existing image."""
    for d in _csv_dirs(root):
        found = [p for p in _csvs_in(d) if _names_images(p, options)]
        if found:
            return found
    return []


def _names_images(meta: Path, options: CsvOptions) -> bool:
    try:
        table = _read_table(meta)
        file_col = _file_column(table, meta, options)
    except UserError:
        return False
    folder_col, listings = _column(table, "folder"), {}
    for rec in table.to_dict("records"):
        file = rec[file_col].strip()
        folder = rec[folder_col].strip() if folder_col else ""
        if Path(file).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if _resolve(meta.parent, folder, file, listings)[1] != "rows_without_file":
            return True
    return False


def _read_table(meta: Path) -> pd.DataFrame:
    """The CSV as strings ("" stays "", ages stay "65"); UTF-8 (with or without BOM), else Latin-1."""
    kwargs = {"dtype": str, "keep_default_na": False, "index_col": False}
    try:
        try:
            return pd.read_csv(meta, encoding="utf-8-sig", **kwargs)
        except UnicodeDecodeError:
            log.warning("%s: not UTF-8; reading it as Latin-1", meta)
            return pd.read_csv(meta, encoding="latin-1", **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        raise UserError(f"{meta}: cannot read the metadata CSV ({exc}); fix it or set data.csv.metadata") from None


def _file_column(table: pd.DataFrame, meta: Path, options: CsvOptions) -> str:
    names = FILE_COLUMNS if options.file_column == "auto" else (options.file_column,)
    col = _first_column(table, names)
    if col is None:
        raise UserError(
            f"{meta}: no file column {'/'.join(names)} (data.csv.file_column); "
            f"found {_found(table)}; set data.csv.file_column"
        )
    return col


def _first_column(table: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    for name in names:
        if (col := _column(table, name)) is not None:
            return col
    return None


def _column(table: pd.DataFrame, name: str) -> str | None:
    """The column of ``table`` named ``name``, ignoring case and surrounding spaces."""
    wanted = name.strip().lower()
    return next((c for c in table.columns if str(c).strip().lower() == wanted), None)


def _found(table: pd.DataFrame) -> str:
    return ", ".join(str(c) for c in table.columns)


def _is_xray(modality: str) -> bool:
    """X-ray as sources write it (X-ray, xray, X ray, CR, DX); an empty modality counts as X-ray."""
    value = re.sub(r"[\s-]", "", modality).lower()
    return value == "" or value in XRAY_MODALITIES


def _csv_dirs(root: Path) -> list[Path]:
    inner = _single_subdir(root)
    return [root] if inner is None else [root, inner]


def _csvs_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv") if folder.is_dir() else []


# --- shared --------------------------------------------------------------------------------


def _subdirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "__MACOSX")


def _single_subdir(root: Path) -> Path | None:
    subdirs = _subdirs(root)
    return subdirs[0] if len(subdirs) == 1 else None


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _images_in(folder: Path) -> list[Path]:
    """Images directly in ``folder`` (hidden files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.rglob("*"))


def _row(path: Path, source_label: str, **fields: object) -> dict[str, object]:
    return dict.fromkeys(COLUMNS, "") | {"path": path.as_posix(), "source_label": source_label} | fields


def _frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.sort_values("path", kind="stable").reset_index(drop=True)
