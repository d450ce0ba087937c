"""class-folders: ``<root>/<class>/**/*`` images, labelled by their class folder (a single wrapper
folder, as zips make, is looked through); the folders between the class folder and the file
(``<class>/<source>/x.png``) are the image's ``source``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from chestxray.config import CsvOptions
from chestxray.data.layouts.common import (
    Layout,
    frame,
    has_images,
    images_in,
    images_under,
    row,
    single_subdir,
    source_name,
    subdirs,
)
from chestxray.errors import UserError


def class_root(root: Path) -> Path:
    """``root``, or the single wrapper folder (``mydata/<class>/...``) holding the classes."""
    while (inner := single_subdir(root)) is not None and not images_in(inner):
        if not any(has_images(d) for d in subdirs(inner)):
            break
        root = inner
    return root


def read(root: Path, csv: CsvOptions) -> tuple[pd.DataFrame, dict[str, int]]:
    rows = [
        row(p, d.name, source=source_name(p.parent.relative_to(d).as_posix()))
        for d in subdirs(class_root(root))
        for p in images_under(d)
    ]
    if not rows:
        raise UserError(f"{root}: no class folders with images; is data.layout right?")
    return frame(rows), {}


LAYOUT = Layout(
    name="class-folders",
    shape="<root>/<class>/**/*.png|jpg",
    matches=lambda root, csv: any(has_images(d) for d in subdirs(class_root(root))),
    read=read,
)
