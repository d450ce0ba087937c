"""The operating point: the COVID threshold chosen on the validation split to reach a target
sensitivity (``evaluate.target_sensitivity``), and what it gives on the test split.

Two rules (``evaluate.threshold_rule``) pick the highest threshold whose validation sensitivity
meets a criterion, so the best specificity that does:

- ``point``: the validation sensitivity itself reaches the target. On a new sample the same
  threshold finds fewer COVID images about half the time: the threshold is fitted to this sample.
- ``lower_bound`` (default): the one-sided 95 % exact (Clopper–Pearson) lower bound of the
  validation sensitivity reaches the target, so the target holds with 95 % confidence. With n
  validation COVID images all found the bound is 0.05^(1/n): fewer than ``positives_needed`` (59 for
  a target of 0.95) can never reach it. Then the threshold with the highest bound is chosen, the
  highest that finds every validation COVID image, ``target_met`` is false and a WARNING says how
  many validation COVID images the target needs.

The test sensitivity and specificity at the threshold come with two-sided 95 % exact
(Clopper–Pearson) intervals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats

from chestxray import counts
from chestxray.errors import UserError
from chestxray.judge.metrics import number
from chestxray.tasks import COVID

Rule = Literal["lower_bound", "point"]
CONFIDENCE = 0.95  # of the validation lower bound (one-sided) and of the test intervals (two-sided)
log = logging.getLogger(__name__)


def lower_bound(found: np.ndarray | int, n: int, confidence: float = CONFIDENCE) -> np.ndarray:
    """The one-sided exact (Clopper–Pearson) lower confidence bound of a proportion, ``found`` of
    ``n`` (vectorised over ``found``): the ``1 - confidence`` quantile of Beta(found, n - found + 1);
    0 when nothing was found."""
    k = np.asarray(found)
    return np.where(k > 0, stats.beta.ppf(1 - confidence, np.maximum(k, 1), n - k + 1), 0.0)


def positives_needed(target: float, confidence: float = CONFIDENCE) -> int | None:
    """The fewest positives, all found, whose lower bound reaches ``target``: the least n with
    (1 - confidence)^(1/n) ≥ target. None for a target of 1, which no bound reaches."""
    if target >= 1:
        return None
    n = max(1, math.ceil(math.log(1 - confidence) / math.log(target)))
    return n if lower_bound(n, n, confidence) >= target else n + 1  # the ceiling's float rounding


def required_found(n: int, target: float, rule: Rule) -> int | None:
    """The fewest of ``n`` validation positives found that meet ``rule``'s criterion for
    ``target``; None when no count can (``lower_bound`` with too few positives)."""
    found = np.arange(n + 1)
    criterion = found / n if rule == "point" else lower_bound(found, n)
    met = np.flatnonzero(criterion >= target)
    return int(met[0]) if met.size else None


def choose_threshold(positive: np.ndarray, scores: np.ndarray, target: float, rule: Rule) -> float:
    """The highest threshold on ``scores`` whose validation sensitivity meets ``rule``'s criterion
    for ``target`` (when none can: the highest that finds every positive); a score at or above it
    counts as positive."""
    n = int(positive.sum())
    if n == 0:
        raise UserError(
            "the validation split has no COVID images: no operating point can be chosen; use a larger split.val"
        )
    found = required_found(n, target, rule)
    if found is None:
        needed = positives_needed(target)
        log.warning(
            "the validation split has %d COVID images: too few for the one-sided %d %% lower bound of sensitivity"
            " to reach %s (%s); the threshold finds every validation COVID image instead (target_met: false)",
            n,
            round(CONFIDENCE * 100),
            target,
            f"that needs at least {needed}" if needed else "no number of images can",
        )
        found = n
    return float(np.sort(scores[positive])[::-1][found - 1])


def called_counts(positive: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """Of ``scores >= threshold``: (positives called, positives, negatives not called, negatives)."""
    called = scores >= threshold
    return int(called[positive].sum()), int(positive.sum()), int((~called[~positive]).sum()), int((~positive).sum())


def _share(k: int, n: int) -> float | None:
    """``k / n`` as a JSON-ready number (``counts.ratio``); None for n = 0."""
    return number(counts.ratio(k, n, np.nan))


def exact_interval(k: int, n: int) -> dict[str, float | None]:
    """The two-sided exact (Clopper–Pearson) ``CONFIDENCE`` interval of ``k`` of ``n`` (None for n = 0)."""
    if n == 0:
        return {"low": None, "high": None}
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return {"low": number(ci.low), "high": number(ci.high)}


def operating_point(
    y_val: np.ndarray,
    prob_val: np.ndarray,
    y_test: np.ndarray,
    prob_test: np.ndarray,
    classes: Sequence[str],
    target: float,
    rule: Rule,
) -> dict[str, Any]:
    """The COVID threshold chosen on validation by ``rule`` for ``target`` sensitivity, what it
    gives on validation, and the test sensitivity and specificity (COVID vs the rest) at it with
    exact intervals, as a JSON-ready dict."""
    c = list(classes).index(COVID)
    threshold = choose_threshold(y_val == c, prob_val[:, c], target, rule)
    val_found, val_positives, val_rejected, val_negatives = called_counts(y_val == c, prob_val[:, c], threshold)
    found, positives, rejected, negatives = called_counts(y_test == c, prob_test[:, c], threshold)
    val_bound = float(lower_bound(val_found, val_positives))
    return {
        # exact, not rounded: the served model applies this number, and a validation score between it
        # and a rounded one would be called differently than the sensitivities below say
        "threshold": threshold,
        "rule": rule,
        "target_sensitivity": target,
        "target_met": (val_bound if rule == "lower_bound" else val_found / val_positives) >= target,
        "val_sensitivity": _share(val_found, val_positives),
        "val_sensitivity_lower_bound": number(val_bound),
        "val_specificity": _share(val_rejected, val_negatives),
        "val_positives": val_positives,
        "sensitivity": _share(found, positives),
        "specificity": _share(rejected, negatives),
        "positives": positives,
        "negatives": negatives,
        "ci": {"sensitivity": exact_interval(found, positives), "specificity": exact_interval(rejected, negatives)},
    }
