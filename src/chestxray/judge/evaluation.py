"""Evaluate on the test split only: classification metrics, bootstrap confidence intervals,
calibration and the operating point (pure functions, JSON-ready), and the evaluate stage that
writes, plots and logs them."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from chestxray import reports, tracking
from chestxray.config import EvaluateConfig
from chestxray.data.cache import cache_meta, load_split
from chestxray.data.labels import COVID
from chestxray.errors import UserError
from chestxray.io import atomic_path, read_json, write_csv, write_json
from chestxray.judge import model_card
from chestxray.serve import serving

log = logging.getLogger(__name__)


def _num(value: float | None) -> float | None:
    """A plain float rounded to 6 decimals, or None when undefined (None, NaN, inf)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), 6)


def _check(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return ``(y_true, y_prob)`` as int and float arrays."""
    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_prob.ndim != 2 or y_prob.shape != (len(y_true), len(classes)):
        raise ValueError(f"y_prob has shape {y_prob.shape}, expected ({len(y_true)}, {len(classes)})")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= len(classes)):
        raise ValueError(f"y_true has labels outside 0..{len(classes) - 1}")
    return y_true, y_prob


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) int counts; rows are true classes, columns predicted classes."""
    return skm.confusion_matrix(np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int), labels=range(k))


def _both_present(positive: np.ndarray) -> bool:
    """Whether a one-vs-rest target has both positives and negatives (else ROC is undefined)."""
    return bool(positive.any() and not positive.all())


def _one_vs_rest_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC of one class against the rest, or None without both positives and negatives."""
    if not _both_present(positive):
        return None
    return float(skm.roc_auc_score(positive, scores))


def classification_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str], bins: int = 10
) -> dict[str, Any]:
    """Overall and per-class metrics as a JSON-ready dict (floats rounded, None when undefined).

    The predicted class is the argmax of ``y_prob``; recall is sensitivity and specificity is
    TN / (TN + FP) for each class taken one-vs-rest; ``ece`` uses ``bins`` confidence bins.
    """
    y_true, y_prob = _check(y_true, y_prob, classes)
    k = len(classes)
    labels = list(range(k))
    y_pred = y_prob.argmax(axis=1)
    cm = confusion(y_true, y_pred, k)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    aucs = [_one_vs_rest_auc(y_true == i, y_prob[:, i]) for i in labels]
    pr_aucs = [_average_precision(y_true == i, y_prob[:, i]) for i in labels]

    per_class: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(classes):
        fp = cm[:, i].sum() - cm[i, i]
        tn = cm.sum() - cm[i, :].sum() - cm[:, i].sum() + cm[i, i]
        per_class[name] = {
            "precision": _num(precision[i]),
            "recall": _num(recall[i]),
            "specificity": _num(tn / (tn + fp)) if tn + fp else None,
            "f1": _num(f1[i]),
            "support": int(support[i]),
            "roc_auc": _num(aucs[i]),
            "pr_auc": _num(pr_aucs[i]),
        }

    return {
        "accuracy": _num(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _num(np.mean([recall[i] for i in labels if support[i]])),
        "macro_precision": _num(np.mean(precision)),
        "macro_recall": _num(np.mean(recall)),
        "macro_f1": _num(np.mean(f1)),
        "weighted_precision": _num(np.average(precision, weights=support)),
        "weighted_recall": _num(np.average(recall, weights=support)),
        "weighted_f1": _num(np.average(f1, weights=support)),
        "log_loss": _num(skm.log_loss(y_true, y_prob, labels=labels)),
        "roc_auc_macro": _mean_defined(aucs),
        "pr_auc_macro": _mean_defined(pr_aucs),
        "ece": _num(expected_calibration_error(reliability(y_true, y_prob, bins))),
        "n": int(len(y_true)),
        "per_class": per_class,
    }


def _average_precision(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve (average precision), or None without positives and negatives."""
    if not _both_present(positive):
        return None
    return float(skm.average_precision_score(positive, scores))


def _mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are defined, or None when none is."""
    defined = [v for v in values if v is not None]
    return _num(np.mean(defined)) if defined else None


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


def expected_calibration_error(table: pd.DataFrame) -> float:
    """Σ (bin share) · |accuracy − confidence| over the non-empty bins of a ``reliability`` table."""
    filled = table[table["count"] > 0]
    return float((filled["count"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / filled["count"].sum())


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], resamples: int, seed: int, level: float = 0.95
) -> dict[str, dict[str, float | None]]:
    """Percentile bootstrap intervals (test images resampled with replacement, seeded) for
    accuracy, macro-F1 and the COVID class's sensitivity and specificity."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    k, n = len(classes), len(y_true)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    codes = (y_true[idx] * k + y_pred[idx]) + (np.arange(resamples) * k * k)[:, None]
    cm = np.bincount(codes.ravel(), minlength=resamples * k * k).reshape(resamples, k, k).astype(float)
    stats = _rates(cm, list(classes).index(COVID))
    tail = (1 - level) / 2 * 100
    return {
        name: dict(zip(("low", "high"), (_num(v) for v in np.nanpercentile(values, [tail, 100 - tail])), strict=True))
        for name, values in stats.items()
    }


def _rates(cm: np.ndarray, positive: int) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 (over the classes that occur as actual or predicted: a resample can miss
    a rare class) and one class's sensitivity and specificity from a stack of confusion matrices
    (..., k, k); NaN where undefined."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    actual, predicted, total = cm.sum(axis=-1), cm.sum(axis=-2), cm.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(actual + predicted > 0, 2 * tp / (actual + predicted), np.nan)
        negatives = total - actual[..., positive]
        true_negatives = negatives - (predicted[..., positive] - tp[..., positive])
        return {
            "accuracy": tp.sum(axis=-1) / total,
            "macro_f1": np.nanmean(f1, axis=-1),
            "covid_sensitivity": tp[..., positive] / actual[..., positive],
            "covid_specificity": true_negatives / negatives,
        }


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
    return _num(sensitivity), _num(specificity)


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
        "threshold": _num(threshold),
        "target_sensitivity": target,
        "val_sensitivity": val_sensitivity,
        "val_specificity": val_specificity,
        "sensitivity": sensitivity,
        "specificity": specificity,
    }


def roc_curves(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
    """One-vs-rest ROC curves (fpr, tpr, threshold) for each class with positives and negatives.

    sklearn's infinite first threshold is replaced by 1.0 so every value is finite.
    """

    def roc(positive: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        fpr, tpr, thresholds = skm.roc_curve(positive, scores)
        return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.where(np.isfinite(thresholds), thresholds, 1.0)})

    return _one_vs_rest(y_true, y_prob, classes, roc)


def pr_curves(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
    """One-vs-rest precision-recall curves (recall, precision, threshold) for each class with
    positives and negatives; the last point (recall 0, precision 1) has threshold 1.0."""

    def pr(positive: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        precision, recall, thresholds = skm.precision_recall_curve(positive, scores)
        return pd.DataFrame({"recall": recall, "precision": precision, "threshold": [*thresholds, 1.0]})

    return _one_vs_rest(y_true, y_prob, classes, pr)


def _one_vs_rest(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    classes: Sequence[str],
    curve: Callable[[np.ndarray, np.ndarray], pd.DataFrame],
) -> dict[str, pd.DataFrame]:
    """``curve(positive, scores)`` of each class that has positives and negatives, by name."""
    y_true, y_prob = _check(y_true, y_prob, classes)
    return {name: curve(y_true == i, y_prob[:, i]) for i, name in enumerate(classes) if _both_present(y_true == i)}


def evaluate_model(
    cfg: EvaluateConfig, seed: int, model_dir: Path, cache_dir: Path, metrics_dir: Path, reports_dir: Path
) -> dict[str, Any]:
    """Score the trained model on the test split (the operating point is chosen on validation);
    write ``metrics/evaluate.json``, the plots and tables under ``reports/evaluate/``, the Grad-CAM
    gallery, the model card, and log all of it and the servable model to the training run."""
    # Imported here: explain and models load TensorFlow; models also registers the custom layer
    # and the focal loss that load_model needs.
    import keras

    from chestxray.judge import explain
    from chestxray.learn.models import predict_proba

    run = read_json(model_dir / "run.json")
    classes = cache_meta(cache_dir)["classes"]
    model = keras.models.load_model(model_dir / "model.keras")
    x_val, y_val = load_split(cache_dir, "val")
    x, y = load_split(cache_dir, "test")
    prob_val, prob = predict_proba(model, x_val), predict_proba(model, x)
    metrics = {
        **classification_metrics(y, prob, classes, cfg.calibration_bins),
        "ci": bootstrap_ci(y, prob.argmax(axis=1), classes, cfg.bootstrap, seed),
        "operating_point": operating_point(y_val, prob_val, y, prob, classes, cfg.target_sensitivity),
        "data_version": run["data_version"],
        "run_id": run["run_id"],
    }
    paths = pd.read_csv(cache_dir / "test.csv", keep_default_na=False)["path"]
    out = reports_dir / "evaluate"
    write_plots(y, prob, classes, paths, metrics, cfg.calibration_bins, out)
    explain.gallery(model, x, y, prob, classes, paths, reports_dir / "gradcam", cfg.gradcam_images)
    write_json(metrics_dir / "evaluate.json", metrics)
    card = model_card.render(
        run,
        metrics,
        *(read_json(metrics_dir / f"{name}.json") for name in ("train", "split", "download")),
        cfg.bootstrap,
    )
    with atomic_path(reports_dir / "model_card.md") as tmp:
        tmp.write_text(card, encoding="utf-8")
    with tracking.run(run_id=run["run_id"]):
        tracking.log_metrics(metrics, prefix="test.")
        for path, artifact_path in (
            (out, "evaluate"),
            (reports_dir / "gradcam", "gradcam"),
            (reports_dir / "model_card.md", None),
        ):
            tracking.log_artifacts(path, artifact_path)
        serving.log_model(
            model_dir / "model.keras", classes, run["image_size"], metrics["operating_point"]["threshold"]
        )
    op = metrics["operating_point"]
    log.info(
        "test: accuracy %.4f, macro-F1 %.4f [%.4f, %.4f] on %d images; at COVID threshold %.4f: sensitivity %s, specificity %s",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["ci"]["macro_f1"]["low"],
        metrics["ci"]["macro_f1"]["high"],
        metrics["n"],
        op["threshold"],
        op["sensitivity"],
        op["specificity"],
    )
    return metrics


def write_plots(
    y: np.ndarray,
    prob: np.ndarray,
    classes: Sequence[str],
    paths: Sequence[str],
    metrics: dict[str, Any],
    bins: int,
    out: Path,
) -> None:
    """Predictions, curves (CSV for dvc plots) and their PNGs: confusion matrix, ROC, PR, reliability."""
    names = np.asarray(classes)
    pred = prob.argmax(axis=1)
    table = pd.DataFrame({"path": paths, "actual": names[y], "predicted": names[pred]})
    table["predicted_at_threshold"] = names[serving.decide(prob, classes, metrics["operating_point"]["threshold"])]
    table = table.join(pd.DataFrame(prob.round(6), columns=[f"p_{c}" for c in classes]))
    write_csv(out / "predictions.csv", table)
    per_class = metrics["per_class"]
    for kind, curves, area, plot in (
        ("roc", roc_curves(y, prob, classes), "roc_auc", reports.plot_roc),
        ("pr", pr_curves(y, prob, classes), "pr_auc", reports.plot_pr),
    ):
        (out / kind).mkdir(parents=True, exist_ok=True)
        for name, curve in curves.items():
            write_csv(out / kind / f"{name}.csv", curve)
        plot(curves, {c: per_class[c][area] for c in classes}, out / f"{kind}.png")
    calibration = reliability(y, prob, bins)
    write_csv(out / "reliability.csv", calibration)
    reports.plot_reliability(calibration, metrics["ece"], out / "reliability.png")
    reports.plot_confusion(confusion(y, pred, len(classes)), classes, out / "confusion.png")
