"""covid19-radiography: the Kaggle COVID-19 Radiography Database, ``COVID-19_Radiography_Dataset/
<Class>/images/*.png`` with lung masks in ``<Class>/masks/`` and a ``<Class>.metadata.xlsx`` per class
whose ``FILE NAME`` column lists the images (matched ignoring case) and whose ``URL`` column names the
dataset each image came from (its host and path become ``source``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from chestxray.config import CsvOptions
from chestxray.data import radiography
from chestxray.data.layouts.common import RECONCILIATION, Layout, frame, is_image, row, url_source
from chestxray.errors import UserError

log = logging.getLogger(__name__)


def base(root: Path) -> Path | None:
    """``root/COVID-19_Radiography_Dataset`` or ``root`` if it holds a ``<Class>/images/`` folder."""
    for folder in (root / radiography.DIR, root):
        if any((folder / cls / radiography.IMAGES).is_dir() for cls in radiography.CLASSES):
            return folder
    return None


def read(root: Path, csv: CsvOptions) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every image of every class folder, its mask path, whether the class's workbook names it and the
    source its row gives. A workbook row without a file is kept (validation rejects it as ``missing_file``)."""
    folder = base(root)
    if folder is None:
        raise UserError(f"{root}: no {radiography.DIR}/<Class>/images/ folders; is data.layout right?")
    rows, recon, has_metadata = [], dict.fromkeys(RECONCILIATION, 0), False
    for cls in radiography.CLASSES:
        images_dir = folder / cls / radiography.IMAGES
        images = [p for p in sorted(images_dir.glob("*")) if is_image(p)]
        if not images:
            state = "empty" if images_dir.is_dir() else "missing"
            log.warning("%s: class %s has no images (the folder is %s)", images_dir, cls, state)
        names = _metadata_sources(folder / radiography.metadata_file(cls))
        has_metadata |= names is not None
        lower = {n.lower(): source for n, source in names.items()} if names is not None else {}
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
            source = names.get(p.stem, lower.get(p.stem.lower(), "")) if names is not None else ""
            mask = folder / cls / radiography.MASKS / p.name
            mask_path = mask.as_posix() if mask.exists() else ""
            rows.append(row(p, cls, mask_path=mask_path, in_metadata=in_meta, source=source))
        if names is not None and images:
            stems = {p.stem.lower() for p in images}
            for name in sorted(n for n in names if n.lower() not in stems):
                recon["rows_without_file"] += 1
                rows.append(row(images_dir / f"{name}.png", cls, in_metadata=True, source=names[name]))
    return frame(rows), recon if has_metadata else {}


def _metadata_sources(xlsx: Path) -> dict[str, str] | None:
    """{``FILE NAME`` → source (its ``URL`` through ``url_source``; empty without a URL)} of a
    ``<Class>.metadata.xlsx``, or None if there is no workbook."""
    if not xlsx.exists():
        return None
    try:
        table = pd.read_excel(xlsx)
    except Exception as exc:
        raise UserError(f"{xlsx}: cannot read the metadata workbook ({exc}); re-download the dataset") from None
    if "FILE NAME" not in table.columns:
        raise UserError(f"{xlsx}: no 'FILE NAME' column (found {', '.join(map(str, table.columns))})")
    table = table.dropna(subset=["FILE NAME"])
    urls = table["URL"].fillna("").astype(str) if "URL" in table.columns else [""] * len(table)
    return {str(name).strip(): url_source(url) for name, url in zip(table["FILE NAME"], urls, strict=True)}


LAYOUT = Layout(
    name="covid19-radiography",
    shape=f"{radiography.DIR}/<Class>/images/*.png",
    matches=lambda root, csv: base(root) is not None,
    read=read,
)
