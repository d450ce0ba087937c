"""Evaluate on the test split only: classification metrics (pure functions: JSON-ready summaries,
confusion matrices, ROC curves) and the evaluate stage that writes them, plots them and logs them."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from chestxray import reports, tracking
from chestxray.cache import cache_meta, load_split, make_dataset
from chestxray.io import read_json, write_csv, write_json

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


def classification_metrics(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Overall and per-class metrics as a JSON-ready dict (floats rounded, None when undefined).

    The predicted class is the argmax of ``y_prob``; recall is sensitivity and specificity is
    TN / (TN + FP) for each class taken one-vs-rest.
    """
    y_true, y_prob = _check(y_true, y_prob, classes)
    k = len(classes)
    labels = list(range(k))
    y_pred = y_prob.argmax(axis=1)
    cm = confusion(y_true, y_pred, k)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    aucs = [_one_vs_rest_auc(y_true == i, y_prob[:, i]) for i in labels]
    defined = [a for a in aucs if a is not None]

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
        }

    return {
        "accuracy": _num(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _num(np.mean([recall[i] for i in labels if support[i]])),
        "macro_precision": _num(np.mean(precision)),
        "macro_recall": _num(np.mean(recall)),
        "macro_f1": _num(np.mean(f1)),
        "weighted_f1": _num(np.average(f1, weights=support)),
        "log_loss": _num(skm.log_loss(y_true, y_prob, labels=labels)),
        "roc_auc_macro": _num(np.mean(defined)) if defined else None,
        "n": int(len(y_true)),
        "per_class": per_class,
    }


def roc_curves(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
    """One-vs-rest ROC curves (fpr, tpr, threshold) for each class with positives and negatives.

    sklearn's infinite first threshold is replaced by 1.0 so every value is finite.
    """
    y_true, y_prob = _check(y_true, y_prob, classes)
    curves: dict[str, pd.DataFrame] = {}
    for i, name in enumerate(classes):
        positive = y_true == i
        if not _both_present(positive):
            continue
        fpr, tpr, thresholds = skm.roc_curve(positive, y_prob[:, i])
        thresholds = np.where(np.isfinite(thresholds), thresholds, 1.0)
        curves[name] = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})
    return curves


def evaluate_model(model_dir: Path, cache_dir: Path, metrics_json: Path, out_dir: Path) -> dict[str, Any]:
    """Score the trained model on the test split; write metrics, predictions, confusion matrix and
    ROC curves (CSV for dvc plots, PNG), and log them to the training run in MLflow."""
    import keras

    import chestxray.models  # noqa: F401  (registers the custom preprocessing layer and focal loss)

    run = read_json(model_dir / "run.json")
    classes = cache_meta(cache_dir)["classes"]
    x, y = load_split(cache_dir, "test")
    model = keras.models.load_model(model_dir / "model.keras")
    prob = model.predict(make_dataset(x, y, 64, False, 0).map(lambda images, labels: images), verbose=0)
    prob = prob.astype(np.float64) / prob.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 ± 1e-7
    metrics = {**classification_metrics(y, prob, classes), "data_version": run["data_version"], "run_id": run["run_id"]}
    pred = prob.argmax(axis=1)
    paths = pd.read_csv(cache_dir / "test.csv", keep_default_na=False)["path"]
    table = pd.DataFrame({"path": paths, "actual": np.asarray(classes)[y], "predicted": np.asarray(classes)[pred]})
    table = table.join(pd.DataFrame(prob.round(6), columns=[f"p_{c}" for c in classes]))
    curves = roc_curves(y, prob, classes)
    (out_dir / "roc").mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "predictions.csv", table)
    for name, curve in curves.items():
        write_csv(out_dir / "roc" / f"{name}.csv", curve)
    reports.plot_confusion(confusion(y, pred, len(classes)), classes, out_dir / "confusion.png")
    reports.plot_roc(curves, {c: metrics["per_class"][c]["roc_auc"] for c in classes}, out_dir / "roc.png")
    write_json(metrics_json, metrics)
    with tracking.run(run_id=run["run_id"]):
        tracking.log_metrics(metrics, prefix="test.")
        tracking.log_artifacts(out_dir, "evaluate")
    log.info("test: accuracy %.4f, macro-F1 %.4f on %d images", metrics["accuracy"], metrics["macro_f1"], metrics["n"])
    return metrics
