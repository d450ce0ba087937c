"""Classify image files with a logged model: probabilities per class, the class at the operating
point, and the data the model was trained on with its warning (``trained_on``, ``warning``: a model
trained on synthetic data says ``synthetic data: not meaningful on real X-rays``), as a table, JSON
or CSV."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from chestxray.data.images import IMAGE_SUFFIXES
from chestxray.errors import UserError
from chestxray.serve.serving import XrayClassifier, decode

log = logging.getLogger(__name__)


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files given, and the image files (by suffix) under the folders given, in order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def predict_files(model: XrayClassifier, files: Sequence[Path]) -> pd.DataFrame:
    """One row per file: path, ``p_<class>``, ``predicted``, ``trained_on`` and ``warning``. Every
    file is decoded first, so an unreadable one stops the run, named, before anything is predicted.
    The data the model was trained on is logged (its warning as a WARNING), and the rule
    ``predicted`` follows with its test figures, when the model carries them."""
    images, errors = [], []
    for path in tqdm(files, desc="read", unit="img", disable=len(files) < 100):
        try:
            images.append(decode(path.read_bytes(), model.image_size, str(path)))
        except UserError as exc:
            errors.append(str(exc))
    if errors:
        raise UserError(f"{len(errors)} of {len(files)} file(s) cannot be read: " + "; ".join(errors))
    if warning := model.warning():
        log.warning("%s: the model was trained on %s", warning, model.trained_on())
    else:
        log.info("the model was trained on %s", model.trained_on())
    if (rule := model.served_rule()) is not None:
        log.info("the predicted class follows the operating point. %s", rule)
    table = model.predict_images(np.stack(images))
    table.insert(0, "path", [str(p) for p in files])
    return table


def render(table: pd.DataFrame, fmt: str) -> str:
    """The predictions as JSON records, CSV, or an aligned text table led by a banner line for each
    warning in its ``warning`` column (``WARNING: synthetic data: …``)."""
    if fmt == "json":
        return table.to_json(orient="records", indent=2, double_precision=6) + "\n"
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.6f")
    banners = "".join(f"WARNING: {warning}\n" for warning in dict.fromkeys(table["warning"]) if warning)
    return banners + table.to_string(index=False, float_format=lambda v: f"{v:.4f}") + "\n"
