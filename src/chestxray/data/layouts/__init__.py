"""Layout adapters: a dataset folder as shipped → one table, one row per image (``common.COLUMNS``).

Each adapter is a module holding one ``Layout``; ``LAYOUTS`` lists them in detection order (the
first that matches wins, so the more specific layouts come first). ``data.labels`` maps each row's
``source_label`` to the task's class later.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from chestxray.config import CsvOptions
from chestxray.data.layouts import class_folders, covid19_image_dataset, covid19_radiography, csv_table
from chestxray.data.layouts.common import Layout
from chestxray.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_CSV = CsvOptions()

LAYOUTS: tuple[Layout, ...] = (
    covid19_radiography.LAYOUT,
    covid19_image_dataset.LAYOUT,
    csv_table.LAYOUT,
    class_folders.LAYOUT,
)


def get(name: str, key: str = "data.layout") -> Layout:
    """The layout called ``name``; params.yaml's ``key`` names it (or ``auto``)."""
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    names = ", ".join(("auto", *(layout.name for layout in LAYOUTS)))
    raise UserError(f"params.yaml: {key} must be one of {names}, got {name!r}")


def detect_layout(root: Path, csv: CsvOptions = DEFAULT_CSV) -> str:
    """The name of the first layout in ``LAYOUTS`` that ``root`` matches, or fail naming them all."""
    for layout in LAYOUTS:
        if layout.matches(root, csv):
            return layout.name
    shapes = ", ".join(layout.shape for layout in LAYOUTS)
    raise UserError(f"{root}: unknown dataset layout; expected one of: {shapes}; set data.layout or fix the folder")


def read_layout(root: Path, name: str = "auto", csv: CsvOptions = DEFAULT_CSV) -> tuple[pd.DataFrame, dict[str, int]]:
    """(table, metadata reconciliation counts; {} without metadata) of ``root`` read as ``name``."""
    layout = get(detect_layout(root, csv) if name == "auto" else name)
    log.info("reading %s as layout '%s'", root, layout.name)
    return layout.read(root, csv)
