"""The audit stage: does the model look at the lungs, and does it hold on another source? The trained
model scored on test images without their centre and with the centre alone, the share of its Grad-CAM
inside the lung masks, its scores per image source and on external datasets, how close each test image
is to the training set, and the best border-only audit run on the same data; ``reports/audit.json``
(headline: ``metrics/audit.json``), ``reports/audit/``, the model card with its "Shortcut audit", all of
it on the training run in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray import paths, tracking
from chestxray.config import Params
from chestxray.data.cache import cache_meta, load_split
from chestxray.data.leakage import leakage_audit, plot_nearest
from chestxray.data.masks import load_mask
from chestxray.io import atomic_path, read_json, write_csv, write_text
from chestxray.judge import model_card
from chestxray.judge.audit_runs import best_border_only
from chestxray.judge.external import score_external
from chestxray.judge.per_source import per_source, per_source_table
from chestxray.judge.shortcuts import gradcam_in_lungs, occlusion_scores
from chestxray.records import write_record

log = logging.getLogger(__name__)

HEADLINE = ("macro_f1", "accuracy")  # the test scores the audit puts its own beside


def audit_model(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    """Audit ``root``'s trained model (see the module's docstring); write ``reports/audit.json`` (keys
    ``audit``, ``per_source``, ``external``, ``leakage``, ``border_only``), ``reports/audit/`` and the
    model card; log the numbers (``audit.*``, ``per_source.*``, ``external.*``, ``leakage.*``), the
    tables and the card to the training run."""
    import keras  # here: it loads TensorFlow (judge.shortcuts imports learn.models, which registers the custom objects)

    cfg, out = params.audit, root / paths.AUDIT_DIR
    model_dir, cache_dir = root / paths.MODEL_DIR, root / paths.CACHE_DIR
    run, evaluation = read_json(model_dir / "run.json"), read_json(root / paths.EVALUATE_JSON)
    classes = cache_meta(cache_dir)["classes"]
    model = keras.models.load_model(model_dir / "model.keras")
    x, y = load_split(cache_dir, "test")
    test = pd.read_csv(cache_dir / "test.csv", keep_default_na=False)
    manifest = pd.read_csv(root / paths.MANIFEST_CSV, keep_default_na=False, dtype=str).set_index("path")
    split = pd.read_csv(root / paths.SPLIT_CSV, keep_default_na=False, dtype=str)
    predictions = pd.read_csv(root / paths.PREDICTIONS_CSV, keep_default_na=False)
    out.mkdir(parents=True, exist_ok=True)

    shortcut = {
        "occlude": cfg.occlude,
        "headline": {k: evaluation[k] for k in HEADLINE},
        **occlusion_scores(model, x, y, classes, cfg.occlude),
        "gradcam_in_lungs": _gradcam_in_lungs(model, x, y, test, manifest, classes),
    }
    index = {c: i for i, c in enumerate(classes)}
    by_source = per_source(
        predictions["actual"].map(index).to_numpy(),
        predictions["predicted"].map(index).to_numpy(),
        manifest.loc[predictions["path"], "source"].tolist(),
        classes,
        cfg.min_source_images,
    )
    write_csv(out / "per_source.csv", per_source_table(by_source, classes))
    training = manifest.loc[split.loc[split["split"] == "train", "path"], ["phash"]].reset_index()
    external = {}
    for dataset in params.evaluate.external:
        scores, scored = score_external(
            model,
            classes,
            run["image_size"],
            run["occlude"],
            dataset,
            training,
            cfg.near_duplicate_distance,  # the looser audit distance: a near copy of a training image is left out
            params.evaluate,
            root,
        )
        external[dataset.name] = scores
        write_csv(out / "external" / f"{dataset.name}.csv", scored)
    hashed = split.merge(manifest[["phash"]], left_on="path", right_index=True)
    leakage, nearest = leakage_audit(hashed, params.validate_.near_duplicate_distance, cfg.near_duplicate_distance)
    write_csv(out / "nearest_train.csv", nearest)
    plot_nearest(
        nearest["distance"].to_numpy(),
        params.validate_.near_duplicate_distance,
        cfg.near_duplicate_distance,
        out / "nearest_train.png",
    )
    result = {
        "run_id": run["run_id"],
        "data_version": run["data_version"],
        "audit_run": bool(run["occlude"]),
        "data_occlude": run["occlude"],
        "audit": shortcut,
        "per_source": by_source,
        "external": external,
        "leakage": leakage,
        "border_only": best_border_only(run["data_version"], exclude=run["run_id"]),
    }
    records = (read_json(root / p) for p in (paths.TRAIN_JSON, paths.SPLIT_JSON, paths.DOWNLOAD_JSON))
    write_text(
        root / paths.MODEL_CARD_MD, model_card.render(run, evaluation, *records, params.evaluate.bootstrap, result)
    )
    # audit.json and its headline tell DVC the stage is done: renamed into place only once the logging succeeded
    with atomic_path(root / paths.AUDIT_METRICS) as headline_json, atomic_path(root / paths.AUDIT_JSON) as audit_json:
        write_record("audit", result, audit_json, headline_json)
        with tracking.run(run_id=run["run_id"]):
            tracking.set_tags({f"audit.{k}": v for k, v in cfg.model_dump().items()})
            for key in ("audit", "per_source", "external", "leakage"):
                tracking.log_metrics(result[key], prefix=f"{key}.")
            tracking.log_artifacts(out, "audit")
            tracking.log_artifacts(root / paths.MODEL_CARD_MD, None)
    _log_summary(result)
    return result


def _gradcam_in_lungs(
    model: Any, x: np.ndarray, y: np.ndarray, test: pd.DataFrame, manifest: pd.DataFrame, classes: list[str]
) -> dict[str, Any] | None:
    """Grad-CAM mass inside the lung masks over the test images that have a mask; None without masks."""
    masks = manifest.loc[test["path"], "mask_path"].to_numpy()
    has = masks != ""
    if not has.any():
        log.info("no lung masks in this dataset: the Grad-CAM share inside the lungs is not measured")
        return None
    size = x.shape[1]
    stacked = np.stack([load_mask(Path(p), size) for p in masks[has]])
    return gradcam_in_lungs(model, x[has], y[has], stacked, classes)


def _log_summary(result: dict[str, Any]) -> None:
    a = result["audit"]
    log.info(
        "test macro-F1 %.4f whole, %.4f without the central %g box, %.4f with the box alone",
        a["headline"]["macro_f1"],
        a["occluded"]["macro_f1"],
        a["occlude"],
        a["lungs_only"]["macro_f1"],
    )
    if a["gradcam_in_lungs"]:
        log.info(
            "Grad-CAM share inside the lungs %.3f (the lungs cover %.3f of the image)",
            a["gradcam_in_lungs"]["overall"],
            a["gradcam_in_lungs"]["lung_area"],
        )
    for name, scores in result["external"].items():
        log.info("external %s: macro-F1 %s on %d images", name, scores["macro_f1"], scores["n"])
