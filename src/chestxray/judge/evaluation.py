"""The evaluate stage: the trained model scored on the validation split (what compare chooses by) and
on the test split (reported, never chosen by), the operating point chosen on validation, the test
predictions, curves and plots, the Grad-CAM gallery, and all of it with the servable model on the
training run in MLflow. (The audit stage, after it, writes the model card.)"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from chestxray import paths, tracking
from chestxray.config import EvaluateSettings, flatten
from chestxray.counts import confusion
from chestxray.data.cache import cache_meta, load_split
from chestxray.io import atomic_path, read_json, write_csv
from chestxray.judge import plots
from chestxray.judge.metrics import bootstrap_ci, both_present, classification_metrics, reliability
from chestxray.judge.operating_point import operating_point
from chestxray.progress import progress
from chestxray.records import write_record
from chestxray.serve import serving
from chestxray.serve.decision import decide

log = logging.getLogger(__name__)


def evaluate_model(cfg: EvaluateSettings, root: Path = Path(".")) -> dict[str, Any]:
    """Score ``root``'s trained model on the validation and test splits of its cache; write
    ``reports/evaluate.json`` (test metrics at the top, ``validation``, ``operating_point``; headline:
    ``metrics/evaluate.json``), the tables and plots of ``reports/evaluate/`` and the Grad-CAM gallery; log them
    (``test.*``, ``val.*``), the evaluate settings (as tags: a run is evaluated again when only they
    change, and MLflow params cannot change) and the servable model to the training run."""
    # Imported here: they load TensorFlow; models also registers the custom layer and the focal
    # loss that load_model needs.
    import keras

    from chestxray.judge.gallery import gallery
    from chestxray.learn.models import predict_proba

    model_dir, cache_dir = root / paths.MODEL_DIR, root / paths.CACHE_DIR
    run = read_json(model_dir / "run.json")
    classes = cache_meta(cache_dir)["classes"]
    model = keras.models.load_model(model_dir / "model.keras")
    x_val, y_val = load_split(cache_dir, "val")
    x, y = load_split(cache_dir, "test")
    with progress(len(x_val), "predict validation") as bar:
        prob_val = predict_proba(model, x_val, bar)
    with progress(len(x), "predict test") as bar:
        prob = predict_proba(model, x, bar)
    rows = {split: pd.read_csv(cache_dir / f"{split}.csv", keep_default_na=False) for split in ("val", "test")}
    metrics = {
        **split_metrics(y, prob, rows["test"]["group"], classes, cfg),
        "validation": split_metrics(y_val, prob_val, rows["val"]["group"], classes, cfg),
        "operating_point": operating_point(
            y_val, prob_val, y, prob, classes, cfg.target_sensitivity, cfg.threshold_rule
        ),
        "data_version": run["data_version"],
        "run_id": run["run_id"],
    }
    images = rows["test"]["path"]
    write_plots(y, prob, classes, images, metrics, cfg.calibration_bins, root)
    gallery(model, x, y, prob, classes, images, root / paths.GRADCAM_DIR, cfg.gradcam_images)
    # evaluate.json and its headline tell DVC the stage is done: written first beside their place (a
    # read-only reports/ or metrics/ fails before the slow logging), renamed into place only once the
    # logging succeeded.
    with (
        atomic_path(root / paths.EVALUATE_METRICS) as headline_json,
        atomic_path(root / paths.EVALUATE_JSON) as evaluate_json,
    ):
        write_record("evaluate", metrics, evaluate_json, headline_json)
        with tracking.run(run_id=run["run_id"]):
            tracking.set_tags(flatten({"evaluate": cfg.model_dump(exclude={"external"})}))  # the audit reads that
            tracking.log_metrics({k: v for k, v in metrics.items() if k != "validation"}, prefix="test.")
            tracking.log_metrics(metrics["validation"], prefix="val.")
            for path, artifact_path in ((paths.EVALUATE_DIR, "evaluate"), (paths.GRADCAM_DIR, "gradcam")):
                tracking.log_artifacts(root / path, artifact_path)
            serving.log_model(model_dir / "model.keras", classes, run["image_size"], metrics["operating_point"])
    op = metrics["operating_point"]
    log.info(
        "validation macro-F1 %s on %d images; test macro-F1 %s on %d images; at p(COVID) >= %.4f (rule %s):"
        " test sensitivity %s, specificity %s",
        metrics["validation"]["macro_f1"],
        metrics["validation"]["n"],
        metrics["macro_f1"],
        metrics["n"],
        op["threshold"],
        op["rule"],
        op["sensitivity"],
        op["specificity"],
    )
    return metrics


def split_metrics(
    y: np.ndarray, prob: np.ndarray, groups: Sequence[str], classes: Sequence[str], cfg: EvaluateSettings
) -> dict[str, Any]:
    """Every metric of one split (argmax rule), its number of groups, and the cluster-bootstrap CIs
    over those groups."""
    return {
        **classification_metrics(y, prob, classes, cfg.calibration_bins),
        "groups": int(pd.Series(groups).nunique()),
        "ci": bootstrap_ci(y, prob, groups, classes, cfg.bootstrap, cfg.seed, cfg.calibration_bins),
    }


def write_plots(
    y: np.ndarray,
    prob: np.ndarray,
    classes: Sequence[str],
    images: Sequence[str],
    metrics: dict[str, Any],
    bins: int,
    root: Path,
) -> None:
    """Predictions, curves (CSV for dvc plots) and their PNGs: confusion matrix, ROC, PR, reliability."""
    names = np.asarray(classes)
    pred = prob.argmax(axis=1)
    table = pd.DataFrame({"path": images, "actual": names[y], "predicted": names[pred]})
    table["predicted_at_threshold"] = names[decide(prob, classes, metrics["operating_point"]["threshold"])]
    table = table.join(pd.DataFrame(prob.round(6), columns=[f"p_{c}" for c in classes]))
    write_csv(root / paths.PREDICTIONS_CSV, table)
    per_class = metrics["per_class"]
    for folder, png, curves, area, plot in (
        (paths.ROC_DIR, paths.ROC_PNG, roc_curves(y, prob, classes), "roc_auc", plots.roc),
        (paths.PR_DIR, paths.PR_PNG, pr_curves(y, prob, classes), "pr_auc", plots.precision_recall),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, curve in curves.items():
            write_csv(root / folder / f"{name}.csv", curve)
        plot(curves, {c: per_class[c][area] for c in classes}, root / png)
    calibration = reliability(y, prob, bins)
    write_csv(root / paths.RELIABILITY_CSV, calibration)
    plots.reliability(calibration, metrics["ece"], root / paths.RELIABILITY_PNG)
    plots.confusion(confusion(y, pred, len(classes)), classes, root / paths.CONFUSION_PNG)


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
    y_true, y_prob = np.asarray(y_true, dtype=int), np.asarray(y_prob, dtype=float)
    return {name: curve(y_true == i, y_prob[:, i]) for i, name in enumerate(classes) if both_present(y_true == i)}
