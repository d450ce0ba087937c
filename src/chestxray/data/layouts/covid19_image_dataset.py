"""covid19-image-dataset: the Kaggle 3-class set, ``[Covid19-dataset/]{train,test}/<class>/*``; the
source's own split is kept as ``source_split``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from chestxray.config import CsvOptions
from chestxray.data.layouts.common import Layout, frame, has_images, images_under, row, subdirs
from chestxray.errors import UserError

log = logging.getLogger(__name__)

DIR = "Covid19-dataset"
SPLITS = ("train", "test")


def base(root: Path) -> Path | None:
    """``root/Covid19-dataset`` or ``root`` if it holds train/ and/or test/, each with class folders of images."""
    for folder in (root / DIR, root):
        splits = [folder / s for s in SPLITS if (folder / s).is_dir()]
        if splits and all(any(has_images(d) for d in subdirs(s)) for s in splits):
            return folder
    return None


def read(root: Path, csv: CsvOptions) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every image under ``<split>/<class>/``, labelled by its class folder."""
    folder = base(root)
    if folder is None:
        raise UserError(f"{root}: no [{DIR}/]{{train,test}}/<class>/ images; is data.layout right?")
    ignored = [d.name for d in subdirs(folder) if d.name not in SPLITS]
    if ignored:
        log.warning("%s: ignoring folders %s (only %s are read)", folder, ignored, SPLITS)
    rows = [
        row(p, d.name, source_split=split) for split in SPLITS for d in subdirs(folder / split) for p in images_under(d)
    ]
    return frame(rows), {}


LAYOUT = Layout(
    name="covid19-image-dataset",
    shape=f"[{DIR}/]{{train,test}}/<class>/*.png|jpg",
    matches=lambda root, csv: base(root) is not None,
    read=read,
)
