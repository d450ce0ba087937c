"""Classification metrics and their registry.

``METRICS`` lists every overall metric evaluate reports, once: its key (in metrics/evaluate.json and
as ``test.<key>`` in MLflow), its title (a leaderboard column, a model card row), how it is computed,
which way is better, whether it gets a bootstrap confidence interval and whether the leaderboard
shows it. Ranking (``compare.metric``), the intervals, the leaderboard and the model card are derived
from it, so adding a metric is one function and one entry here.

A metric computed from confusion matrices (``counts``) works on a stack of them at once, which is
what the bootstrap resamples. The others (``scores``) need the probabilities; one with an interval
also has ``stack``: its value for a stack of resamples, each given as a weight per image (how often
it was drawn). Values are JSON-ready: floats rounded to 6 decimals, None where undefined.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from chestxray import counts
from chestxray.errors import UserError
from chestxray.tasks import COVID


@dataclass(frozen=True)
class Scores:
    """What a probability-based metric sees: true labels, probabilities (N, k), calibration bins, and
    for ``Metric.stack`` the resamples' weights (R, N)."""

    y_true: np.ndarray
    y_prob: np.ndarray
    bins: int
    weights: np.ndarray | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    counts: Callable[[np.ndarray, int], np.ndarray] | None = None  # (confusion matrices (..., k, k), positive) → (...)
    scores: Callable[[Scores], float | None] | None = None
    stack: Callable[[Scores], np.ndarray] | None = None  # scores of R weighted resamples → (R,), NaN if undefined
    higher_is_better: bool = True
    ci: bool = False
    leaderboard: bool = False


def number(value: float | None) -> float | None:
    """A plain float rounded to 6 decimals, or None when undefined (None, NaN, inf)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), 6)


def _precision(cm: np.ndarray) -> np.ndarray:
    tp, _, predicted, _ = counts.parts(cm)
    return counts.ratio(tp, predicted, 0.0)  # a class never predicted: 0 (as sklearn's zero_division=0)


def _recall(cm: np.ndarray) -> np.ndarray:
    tp, actual, _, _ = counts.parts(cm)
    return counts.ratio(tp, actual, 0.0)


def _weighted(values: np.ndarray, cm: np.ndarray) -> np.ndarray:
    """Mean of per-class ``values`` weighted by each class's number of actual images."""
    actual = cm.sum(axis=-1)
    return (values * actual).sum(axis=-1) / actual.sum(axis=-1)


def accuracy(cm: np.ndarray, positive: int) -> np.ndarray:
    tp, _, _, total = counts.parts(cm)
    return tp.sum(axis=-1) / total


def balanced_accuracy(cm: np.ndarray, positive: int) -> np.ndarray:
    """Mean recall over the classes that occur."""
    tp, actual, _, _ = counts.parts(cm)
    return np.nanmean(counts.ratio(tp, actual, np.nan), axis=-1)


def macro_f1(cm: np.ndarray, positive: int) -> np.ndarray:
    """``counts.macro_f1``: over the classes that occur as actual or predicted."""
    return counts.macro_f1(cm)


def covid_sensitivity(cm: np.ndarray, positive: int) -> np.ndarray:
    tp, actual, _, _ = counts.parts(cm)
    return counts.ratio(tp[..., positive], actual[..., positive], np.nan)


def covid_specificity(cm: np.ndarray, positive: int) -> np.ndarray:
    tp, actual, predicted, total = counts.parts(cm)
    negatives = total - actual[..., positive]
    return counts.ratio(negatives - (predicted[..., positive] - tp[..., positive]), negatives, np.nan)


def both_present(positive: np.ndarray) -> bool:
    """Whether a one-vs-rest target has both positives and negatives (else ROC is undefined)."""
    return bool(positive.any() and not positive.all())


def one_vs_rest(y_true: np.ndarray, y_prob: np.ndarray, area: Callable[..., float]) -> list[float | None]:
    """``area(positive, scores)`` of each class taken one-vs-rest; None where it is undefined."""
    return [
        float(area(y_true == i, y_prob[:, i])) if both_present(y_true == i) else None for i in range(y_prob.shape[1])
    ]


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def reliability(y_true: np.ndarray, y_prob: np.ndarray, bins: int) -> pd.DataFrame:
    """Top-label calibration in ``bins`` equal-width confidence bins: per bin its edges, the
    number of images, their mean confidence and their accuracy (NaN for an empty bin)."""
    confidence = y_prob.max(axis=1)
    correct = y_prob.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)  # (low, high], first bin [0, high]
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, bins) / count
        accuracy = np.bincount(which, correct.astype(float), bins) / count
    return pd.DataFrame(
        {"low": edges[:-1], "high": edges[1:], "count": count, "confidence": mean_confidence, "accuracy": accuracy}
    )


def _weighted_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC-AUC of each row of image ``weights`` (R, N): the weighted share of
    (positive, negative) pairs ranked right, ties counting 1/2 (sklearn's roc_auc_score with
    sample_weight); NaN for a row without positives or negatives."""
    order = np.argsort(scores, kind="stable")
    ties = np.flatnonzero(np.r_[True, np.diff(scores[order]) != 0])  # first position of each distinct score
    w, pos = weights[:, order], positive[order]
    pos_w, neg_w = (np.add.reduceat(w * side, ties, axis=1) for side in (pos, ~pos))
    below = np.cumsum(neg_w, axis=1) - neg_w  # negatives' weight under each distinct score
    pairs = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos_w * (below + neg_w / 2)).sum(axis=1) / pairs, np.nan)


def _macro_auc_stack(s: Scores) -> np.ndarray:
    """``roc_auc_macro`` of each weighted resample: the mean over the classes it has both sides of."""
    aucs = np.stack([_weighted_auc(s.y_true == i, s.y_prob[:, i], s.weights) for i in range(s.y_prob.shape[1])])
    with warnings.catch_warnings():  # a resample with no class on both sides: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(aucs, axis=0)


def _ece_stack(s: Scores) -> np.ndarray:
    """``ece`` of each weighted resample: Σ over bins |Σ weight · (correct − confidence)| / Σ weight,
    with the bins of ``reliability``."""
    confidence = s.y_prob.max(axis=1)
    gap = (s.y_prob.argmax(axis=1) == s.y_true) - confidence
    edges = np.linspace(0.0, 1.0, s.bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, s.bins - 1)
    per_bin = s.weights @ (np.eye(s.bins)[which] * gap[:, None])  # (R, bins)
    return np.abs(per_bin).sum(axis=1) / s.weights.sum(axis=1)


def expected_calibration_error(table: pd.DataFrame) -> float:
    """Σ (bin share) · |accuracy − confidence| over the non-empty bins of a ``reliability`` table."""
    filled = table[table["count"] > 0]
    return float((filled["count"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / filled["count"].sum())


METRICS: tuple[Metric, ...] = (  # in the leaderboard's column order
    Metric("macro_f1", "Macro F1", counts=macro_f1, ci=True, leaderboard=True),
    Metric("accuracy", "Accuracy", counts=accuracy, ci=True, leaderboard=True),
    Metric("balanced_accuracy", "Balanced acc.", counts=balanced_accuracy, ci=True, leaderboard=True),
    Metric("weighted_f1", "Weighted F1", counts=lambda cm, _: _weighted(counts.f1(cm, 0.0), cm), leaderboard=True),
    Metric(
        "roc_auc_macro",
        "ROC-AUC (macro)",
        scores=lambda s: _mean_defined(one_vs_rest(s.y_true, s.y_prob, skm.roc_auc_score)),
        stack=_macro_auc_stack,
        ci=True,
        leaderboard=True,
    ),
    Metric("covid_sensitivity", f"{COVID} sens.", counts=covid_sensitivity, ci=True, leaderboard=True),
    Metric("covid_specificity", f"{COVID} spec.", counts=covid_specificity, ci=True, leaderboard=True),
    Metric(
        "ece",
        "ECE",
        scores=lambda s: expected_calibration_error(reliability(s.y_true, s.y_prob, s.bins)),
        stack=_ece_stack,
        higher_is_better=False,
        ci=True,
        leaderboard=True,
    ),
    Metric(
        "pr_auc_macro",
        "PR-AUC (macro)",
        scores=lambda s: _mean_defined(one_vs_rest(s.y_true, s.y_prob, skm.average_precision_score)),
    ),
    Metric("macro_precision", "Macro precision", counts=lambda cm, _: _precision(cm).mean(axis=-1)),
    Metric("macro_recall", "Macro recall", counts=lambda cm, _: _recall(cm).mean(axis=-1)),
    Metric("weighted_precision", "Weighted precision", counts=lambda cm, _: _weighted(_precision(cm), cm)),
    Metric("weighted_recall", "Weighted recall", counts=lambda cm, _: _weighted(_recall(cm), cm)),
    Metric(
        "log_loss",
        "Log loss",
        scores=lambda s: skm.log_loss(s.y_true, s.y_prob, labels=range(s.y_prob.shape[1])),
        higher_is_better=False,
    ),
)


def get(name: str) -> Metric:
    """The metric called ``name`` (params.yaml's ``compare.metric``)."""
    for metric in METRICS:
        if metric.name == name:
            return metric
    raise UserError(f"params.yaml: compare.metric must be one of {', '.join(m.name for m in METRICS)}, got {name!r}")


def classification_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str], bins: int = 10
) -> dict[str, Any]:
    """Every metric of ``METRICS``, ``n`` and ``per_class`` (precision, recall = sensitivity,
    specificity, F1, support, ROC-AUC and PR-AUC one-vs-rest), as a JSON-ready dict. The predicted
    class is the argmax of ``y_prob``; ``bins`` confidence bins give the ECE."""
    y_true, y_prob = _check(y_true, y_prob, classes)
    k, positive = len(classes), list(classes).index(COVID)
    cm = counts.confusion(y_true, y_prob.argmax(axis=1), k).astype(float)
    scores = Scores(y_true, y_prob, bins)
    values = {m.name: number(m.counts(cm, positive) if m.counts is not None else m.scores(scores)) for m in METRICS}
    precision, recall, f1 = _precision(cm), _recall(cm), counts.f1(cm, 0.0)
    tp, actual, predicted, total = counts.parts(cm)
    negatives = total - actual
    specificity = counts.ratio(negatives - (predicted - tp), negatives, np.nan)
    aucs = one_vs_rest(y_true, y_prob, skm.roc_auc_score)
    pr_aucs = one_vs_rest(y_true, y_prob, skm.average_precision_score)
    per_class = {
        name: {
            "precision": number(precision[i]),
            "recall": number(recall[i]),
            "specificity": number(specificity[i]),
            "f1": number(f1[i]),
            "support": int(actual[i]),
            "roc_auc": number(aucs[i]),
            "pr_auc": number(pr_aucs[i]),
        }
        for i, name in enumerate(classes)
    }
    return {**values, "n": len(y_true), "per_class": per_class}


BOOTSTRAP_CHUNK = 1 << 22  # group or image weights drawn at once: a few float arrays of this size, 32 MB each


def bootstrap_ci(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: Sequence[str],
    classes: Sequence[str],
    resamples: int,
    seed: int,
    bins: int = 10,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Percentile cluster-bootstrap intervals of the metrics with ``ci``: the split's groups (``groups``,
    one per image: patients, duplicate groups or single images) drawn with replacement ``resamples``
    times (seeded), each drawn group bringing all its images. An interval whose resamples all gave one
    value is ``collapsed`` (low and high None): the data cannot bound it, which [1, 1] would hide.
    Resamples are drawn in chunks of about ``BOOTSTRAP_CHUNK`` weights, so memory stays bounded."""
    y_true, y_prob = _check(y_true, y_prob, classes)
    names, group = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    k, g, n = len(classes), len(names), len(y_true)
    per_group = np.zeros((g, k * k))  # each group's images' confusion counts
    np.add.at(per_group, (group, y_true * k + y_prob.argmax(axis=1)), 1)
    positive, chosen = list(classes).index(COVID), [m for m in METRICS if m.ci]
    values = {m.name: np.empty(resamples) for m in chosen}
    rng, rows = np.random.default_rng(seed), max(1, BOOTSTRAP_CHUNK // max(g, n, 1))
    for start in range(0, resamples, rows):
        count = min(rows, resamples - start)
        drawn = rng.integers(0, g, size=(count, g)) + (np.arange(count) * g)[:, None]
        times = np.bincount(drawn.ravel(), minlength=count * g).reshape(count, g).astype(float)
        cm = (times @ per_group).reshape(count, k, k)
        for m in chosen:
            stack = m.counts(cm, positive) if m.counts else m.stack(Scores(y_true, y_prob, bins, times[:, group]))
            values[m.name][start : start + count] = stack
    tail = (1 - level) / 2 * 100
    out: dict[str, dict[str, Any]] = {}
    for name, drawn_values in values.items():
        low, high = (number(v) for v in np.nanpercentile(drawn_values, [tail, 100 - tail]))
        collapsed = low is not None and low == high
        out[name] = {"low": None if collapsed else low, "high": None if collapsed else high, "collapsed": collapsed}
    return out


def _check(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return ``(y_true, y_prob)`` as int and float arrays."""
    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_prob.ndim != 2 or y_prob.shape != (len(y_true), len(classes)):
        raise ValueError(f"y_prob has shape {y_prob.shape}, expected ({len(y_true)}, {len(classes)})")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= len(classes)):
        raise ValueError(f"y_true has labels outside 0..{len(classes) - 1}")
    return y_true, y_prob
