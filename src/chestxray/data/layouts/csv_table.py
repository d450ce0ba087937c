"""csv: a metadata table naming each image and its label (the ieee8023 covid-chestxray-dataset,
Actualmed, or a table of your own; ``data.csv`` says which table and columns). Keeps patient id, sex,
age and view, and as ``source`` the host of a ``url`` column (ieee8023's rows name an article or case
page each, so the host is the source); rows of other modalities (CT) and of non-image files are skipped
and counted."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from chestxray.config import CsvOptions
from chestxray.data.layouts.common import (
    RECONCILIATION,
    Layout,
    frame,
    images_in,
    is_image,
    row,
    single_subdir,
    url_source,
)
from chestxray.errors import UserError

log = logging.getLogger(__name__)

FILE_COLUMNS = ("filename", "imagename", "file_name", "file", "path", "image")
OPTIONAL_COLUMNS = {
    "patient_id": ("patientid", "patient_id", "patient id"),
    "sex": ("sex",),
    "age": ("age",),
    "view": ("view",),
}
XRAY_MODALITIES = ("xray", "cr", "dx")


def read(root: Path, options: CsvOptions) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per table row that names an X-ray image, resolved to its file (exactly, else ignoring case)."""
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
    folder_col, modality_col, url_col = (_column(table, name) for name in ("folder", "modality", "url"))
    recon = dict.fromkeys((*RECONCILIATION, "rows_not_image", "rows_other_modality"), 0)
    listings: dict[Path, dict[str, Path]] = {}
    named: set[Path] = set()
    rows = []
    for rec in table.to_dict("records"):
        file = rec[file_col].strip()
        if not is_image(Path(file)):
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
        source = url_source(rec[url_col], keep_path=False) if url_col else ""
        rows.append(row(path, rec[label_col].strip(), in_metadata=True, source=source, **fields))
    folders = {p.parent for p in named}
    recon["files_without_row"] = sum(p not in named for d in folders for p in images_in(d))
    skipped = recon["rows_not_image"], recon["rows_other_modality"]
    if any(skipped):
        log.info("%s: skipped %d non-image and %d non-X-ray rows", meta, *skipped)
    return frame(rows), recon


def _resolve(base: Path, folder: str, file: str, listings: dict[Path, dict[str, Path]]) -> tuple[Path, str]:
    """(path of ``file``, which reconciliation count it adds to): exact, else ignoring case, else missing."""
    candidates = [base / folder / file] if folder else [base / file, base / "images" / file]
    for path in candidates:
        if path.is_file():
            return path, "matched"
    for path in candidates:
        if path.parent not in listings:
            listings[path.parent] = {p.name.lower(): p for p in images_in(path.parent)}
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
        if not is_image(Path(file)):
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
    inner = single_subdir(root)
    return [root] if inner is None else [root, inner]


def _csvs_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv") if folder.is_dir() else []


LAYOUT = Layout(
    name="csv",
    shape="a metadata *.csv naming images/<file>",
    matches=_has_csv,
    read=read,
)
