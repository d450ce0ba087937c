"""Confusion matrices and what is counted from them, on a stack of matrices at once: the one
definition of macro-F1 that training (``val_macro_f1``) and evaluation share."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) int counts; rows are true classes, columns predicted classes."""
    codes = k * np.asarray(y_true, dtype=int) + np.asarray(y_pred, dtype=int)
    return np.bincount(codes, minlength=k * k).reshape(k, k)


def parts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, actual, predicted) per class and the total, of a stack of confusion matrices."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    return tp, cm.sum(axis=-1), cm.sum(axis=-2), cm.sum(axis=(-2, -1))


def ratio(numerator: np.ndarray, denominator: np.ndarray, undefined: float) -> np.ndarray:
    """``numerator / denominator``, ``undefined`` where the denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, undefined)


def f1(cm: np.ndarray, undefined: float) -> np.ndarray:
    """Per-class F1, ``undefined`` for a class that is neither actual nor predicted."""
    tp, actual, predicted, _ = parts(cm)
    return ratio(2 * tp, actual + predicted, undefined)


def macro_f1(cm: np.ndarray) -> np.ndarray:
    """Mean F1 over the classes that occur as actual or predicted (a bootstrap resample can miss a
    rare class; it is left out rather than scored 0)."""
    return np.nanmean(f1(cm, np.nan), axis=-1)
