"""What every layout adapter shares: the interface, the table's columns and folder helpers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from chestxray.config import CsvOptions
from chestxray.data.images import IMAGE_SUFFIXES

# path (built from the root given, so relative roots stay relative), source_label (as the source
# writes it), patient_id, sex, age, view, mask_path, source_split (strings, empty where the source
# has none), in_metadata (True/False where the source has per-image metadata, else empty) and
# source (where the image came from, as ``source_name`` writes it; empty where the layout has none).
COLUMNS = (
    "path",
    "source_label",
    "patient_id",
    "sex",
    "age",
    "view",
    "mask_path",
    "source_split",
    "in_metadata",
    "source",
)
RECONCILIATION = ("matched", "matched_case_insensitive", "files_without_row", "rows_without_file")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_UNSAFE = re.compile(r"[^A-Za-z0-9_./ -]")


@dataclass(frozen=True)
class Layout:
    """A dataset layout: ``matches(root, csv)`` says whether ``root`` (or its wrapper folder) is laid
    out this way; ``read(root, csv)`` returns the table (``COLUMNS``, one row per image) and the
    metadata reconciliation counts ({} where the layout has no metadata), or fails naming what it
    expected; ``shape`` describes the layout for error messages."""

    name: str
    shape: str
    matches: Callable[[Path, CsvOptions], bool]
    read: Callable[[Path, CsvOptions], tuple[pd.DataFrame, dict[str, int]]]


def subdirs(root: Path) -> list[Path]:
    """Visible subfolders of ``root`` (no dot folders, no ``__MACOSX``), sorted."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "__MACOSX")


def single_subdir(root: Path) -> Path | None:
    """The only subfolder of ``root``, or None."""
    found = subdirs(root)
    return found[0] if len(found) == 1 else None


def is_image(path: Path) -> bool:
    """An image file by its suffix."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))


def images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p) and not p.name.startswith("."))


def has_images(folder: Path) -> bool:
    return any(is_image(p) and p.is_file() for p in folder.rglob("*"))


def row(path: Path, source_label: str, **fields: object) -> dict[str, object]:
    """One table row: every column empty but ``path``, ``source_label`` and ``fields``."""
    return dict.fromkeys(COLUMNS, "") | {"path": path.as_posix(), "source_label": source_label} | fields


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """The rows as the layout table, sorted by path."""
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.sort_values("path", kind="stable").reset_index(drop=True)


def source_name(name: str) -> str:
    """``name`` as a table label and an MLflow metric-key part: ``/``-separated parts without empty,
    ``.`` or ``..`` parts (MLflow refuses keys that a path would normalise), each stripped, and every
    character outside ``[A-Za-z0-9_./ -]`` replaced by ``_``."""
    parts = (part.strip() for part in name.split("/"))
    return _UNSAFE.sub("_", "/".join(part for part in parts if part not in ("", ".", "..")))


def url_source(url: str, keep_path: bool = True) -> str:
    """The source named by ``url``: without scheme, ``www.``, query and fragment; its host (lower case) and
    path, or only its host (``keep_path=False``); through ``source_name``. Empty for an empty ``url``."""
    address = re.split(r"[?#]", _SCHEME.sub("", url.strip()), maxsplit=1)[0]
    host, _, path = address.partition("/")
    host = host.lower().removeprefix("www.")
    return source_name(f"{host}/{path}" if keep_path else host)
