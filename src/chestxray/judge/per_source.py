"""Metrics per image source (the layout's ``source`` column): a composite dataset whose classes come
from different hospitals, scanners or age groups lets a model learn the source instead of the disease,
and the scores per source show it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from chestxray import counts
from chestxray.judge.metrics import number


def per_source(
    y: np.ndarray, pred: np.ndarray, sources: Sequence[str], classes: Sequence[str], min_images: int
) -> dict[str, dict[str, Any]]:
    """{source → {"n", "accuracy", "macro_f1", "classes": {class → n}}} for each non-empty source with at
    least ``min_images`` images; ``y`` and ``pred`` are class indices into ``classes``, one per image.
    Sorted by n (descending), then name; ``classes`` counts the true labels, in ``classes`` order.

    macro-F1 is the mean F1 (``counts.f1``, as sklearn's ``f1_score(labels=present, average="macro")``)
    over the classes present among the source's true labels, so a class the source never holds does not
    count against it. With fewer than two classes present it is None: a single-class source has no
    macro-F1, and that is itself the confound finding, since for its images the class and the source
    cannot be told apart (a model may score them by where they came from)."""
    y, pred, names = np.asarray(y, dtype=int), np.asarray(pred, dtype=int), np.asarray(sources, dtype=str)
    found = {s: int(n) for s, n in zip(*np.unique(names, return_counts=True), strict=True) if s and n >= min_images}
    result = {}
    for source in sorted(found, key=lambda s: (-found[s], s)):
        mask = names == source
        result[source] = _scores(y[mask], pred[mask], classes)
    return result


def per_source_table(scores: dict[str, dict[str, Any]], classes: Sequence[str]) -> pd.DataFrame:
    """``per_source``'s result as a table: one row per source (``source``, ``n``, ``accuracy``,
    ``macro_f1``, then the number of images of each class), in its order."""
    rows = [
        {
            "source": source,
            **{k: s[k] for k in ("n", "accuracy", "macro_f1")},
            **{c: s["classes"].get(c, 0) for c in classes},
        }
        for source, s in scores.items()
    ]
    return pd.DataFrame(rows, columns=["source", "n", "accuracy", "macro_f1", *classes])


def _scores(y: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    cm = counts.confusion(y, pred, len(classes))
    actual = cm.sum(axis=1)
    present = actual > 0
    macro_f1 = number(counts.f1(cm, 0.0)[present].mean()) if present.sum() >= 2 else None
    return {
        "n": len(y),
        "accuracy": number(np.trace(cm) / len(y)),
        "macro_f1": macro_f1,
        "classes": {c: int(n) for c, n in zip(classes, actual, strict=True) if n},
    }
