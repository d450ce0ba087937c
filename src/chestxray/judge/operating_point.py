"""The operating point: the COVID threshold chosen on the validation split to reach a target
sensitivity (``evaluate.target_sensitivity``), and what it gives on the test split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from chestxray.errors import UserError
from chestxray.judge.metrics import number
from chestxray.tasks import COVID


def choose_threshold(positive: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold on ``scores`` whose sensitivity reaches ``target`` (so the best
    specificity that does); a score at or above it counts as positive."""
    if not positive.any():
        raise UserError(
            "the validation split has no COVID images: no operating point can be chosen; use a larger split.val"
        )
    _, tpr, thresholds = skm.roc_curve(positive, scores, drop_intermediate=False)
    return float(min(thresholds[np.argmax(tpr >= target)], 1.0))


def sensitivity_specificity(
    positive: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[float | None, float | None]:
    """Sensitivity and specificity of ``scores >= threshold`` (None where undefined)."""
    called = scores >= threshold
    sensitivity = called[positive].mean() if positive.any() else None
    specificity = (~called[~positive]).mean() if (~positive).any() else None
    return number(sensitivity), number(specificity)


def operating_point(
    y_val: np.ndarray,
    prob_val: np.ndarray,
    y_test: np.ndarray,
    prob_test: np.ndarray,
    classes: Sequence[str],
    target: float,
) -> dict[str, float | None]:
    """The COVID threshold chosen on validation to reach ``target`` sensitivity, and the test
    sensitivity and specificity (COVID vs the rest) at that threshold."""
    c = list(classes).index(COVID)
    threshold = choose_threshold(y_val == c, prob_val[:, c], target)
    val_sensitivity, val_specificity = sensitivity_specificity(y_val == c, prob_val[:, c], threshold)
    sensitivity, specificity = sensitivity_specificity(y_test == c, prob_test[:, c], threshold)
    return {
        # exact, not rounded: the served model applies this number, and a validation score between it
        # and a rounded one would be called differently than the sensitivities below say
        "threshold": threshold,
        "target_sensitivity": target,
        "val_sensitivity": val_sensitivity,
        "val_specificity": val_specificity,
        "sensitivity": sensitivity,
        "specificity": specificity,
    }
