"""Two-phase transfer learning: the head on a frozen pretrained base, then the top layers of the
base at a lower rate; best checkpoint by ``train.monitor``; every epoch in MLflow and dvc plots."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from chestxray import tracking
from chestxray.config import AugmentConfig, Params, TrainConfig
from chestxray.data.cache import cache_meta, load_split, make_dataset
from chestxray.io import atomic_path, read_json, write_json
from chestxray.learn import devices
from chestxray.learn.models import SparseFocalLoss, build_model, is_pretrained, unfreeze_top
from chestxray.reports import plot_history

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic`` also make TF ops deterministic."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def augmenter(cfg: AugmentConfig, seed: int) -> keras.Sequential | None:
    """Keras preprocessing layers for on-the-fly augmentation, or None when all are off."""
    steps = []
    if cfg.rotation:
        steps.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="constant", seed=seed))
    if cfg.shift:
        steps.append(keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", seed=seed + 1))
    if cfg.shear:
        steps.append(keras.layers.RandomShear(cfg.shear, cfg.shear, fill_mode="constant", seed=seed + 5))
    if cfg.zoom:
        steps.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=seed + 2))
    if cfg.contrast:
        steps.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 3))
    if cfg.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed + 4))
    return keras.Sequential(steps, name="augment") if steps else None


def class_weights(y: np.ndarray, k: int) -> dict[int, float]:
    """Balanced weights n / (k · count) so every class weighs the same in the loss."""
    counts = np.bincount(y, minlength=k)
    return {i: float(len(y) / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


def loss_for(cfg: TrainConfig, y: np.ndarray, classes: Sequence[str]) -> keras.losses.Loss:
    """Cross-entropy, or with ``imbalance: focal`` the focal loss with its per-class alpha."""
    if cfg.imbalance != "focal":
        return keras.losses.SparseCategoricalCrossentropy()
    if cfg.focal.alpha == "balanced":
        alpha = list(class_weights(y, len(classes)).values())
    else:
        alpha = [cfg.focal.alpha[c] for c in classes]
    return SparseFocalLoss(alpha, cfg.focal.gamma)


def train_model(
    params: Params,
    cache_dir: Path,
    model_dir: Path,
    metrics_json: Path,
    reports_dir: Path,
    data_records: Sequence[Path] = (),
) -> dict[str, Any]:
    """Train ``params.model`` on the cache; write the best model, its run id, metrics and curves.
    ``data_records`` (the data stages' metrics JSON) go to the MLflow run as provenance."""
    cfg = params.train
    seed_everything(params.seed, cfg.deterministic)
    meta = cache_meta(cache_dir)
    classes, size, data_version = meta["classes"], meta["image_size"], meta["data_version"]
    policy, strategy = devices.dtype_policy(cfg.mixed_precision), devices.strategy(cfg.distribute)
    batch_size = cfg.batch_size * strategy.num_replicas_in_sync
    log.info("%d replica(s), global batch %d, dtype policy %s", strategy.num_replicas_in_sync, batch_size, policy)
    x_train, y_train = load_split(cache_dir, "train")
    x_val, y_val = load_split(cache_dir, "val")
    train_ds = make_dataset(
        x_train,
        y_train,
        batch_size,
        True,
        params.seed,
        augmenter(cfg.augment, params.seed),
        balanced=cfg.imbalance == "oversample",
    )
    val_ds = make_dataset(x_val, y_val, batch_size, False, params.seed)
    with devices.dtype_policy_scope(policy), strategy.scope():
        model, base = build_model(params.model, size, len(classes), cfg.weights, params.backbone, cfg.head)
    pretrained = is_pretrained(params.model, cfg.weights)
    lr = float(params.backbone["learning_rate"])
    phases = [("head" if pretrained else "full", cfg.epochs, lr, None)]
    if pretrained and cfg.fine_tune_epochs:
        phases.append(("fine_tune", cfg.fine_tune_epochs, lr * cfg.fine_tune_lr_factor, cfg.fine_tune_layers))
    weights = class_weights(y_train, len(classes)) if cfg.imbalance == "class_weight" else None
    loss = loss_for(cfg, y_train, classes)
    curves_dir = reports_dir / "train"
    curves_dir.mkdir(parents=True, exist_ok=True)
    history_csv = curves_dir / "history.csv"
    history_csv.unlink(missing_ok=True)

    with (
        atomic_path(model_dir, is_dir=True) as out,
        tracking.run(tracking.run_tags(params.model, data_version)) as run_id,
    ):
        resolved = {"dtype_policy": policy, "replicas": strategy.num_replicas_in_sync, "global_batch_size": batch_size}
        tracking.log_params({**params.flat, "resolved": resolved})
        tracking.log_data_records({p.stem: read_json(p) for p in data_records if p.exists()})
        checkpoint = keras.callbacks.ModelCheckpoint(out / "model.keras", monitor=cfg.monitor, save_best_only=True)
        csv_log = keras.callbacks.CSVLogger(history_csv, append=True)  # one row per epoch, written as it ends
        to_mlflow = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: tracking.log_metrics(logs, step=epoch)
        )
        epoch, start, fine_tune_epoch = 0, time.perf_counter(), None
        for phase, epochs, rate, unfreeze in phases:
            if unfreeze is None:
                base.trainable = not pretrained
            else:
                fine_tune_epoch = epoch
                log.info("fine-tuning: %d trainable layers in the base", unfreeze_top(base, unfreeze))
            with strategy.scope():
                optimizer = keras.optimizers.Adam(rate, use_ema=cfg.ema_momentum > 0, ema_momentum=cfg.ema_momentum)
                model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
            log.info(
                "phase %s: %d epochs at learning rate %g, %d trainable weights",
                phase,
                epochs,
                rate,
                len(model.trainable_weights),
            )
            fit = model.fit(
                train_ds,
                validation_data=val_ds,
                initial_epoch=epoch,
                epochs=epoch + epochs,
                class_weight=weights,
                callbacks=[
                    # before the checkpoint, so validation and checkpoints use the weights' moving average
                    *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema_momentum else []),
                    checkpoint,
                    keras.callbacks.EarlyStopping(monitor=cfg.monitor, patience=cfg.patience),
                    keras.callbacks.ReduceLROnPlateau(
                        monitor=cfg.monitor, factor=0.5, patience=max(1, cfg.patience // 2)
                    ),
                    csv_log,
                    to_mlflow,
                ],
                verbose=1 if sys.stdout.isatty() else 2,
            )
            epoch += len(fit.history["loss"])
        seconds = time.perf_counter() - start
        curves = pd.read_csv(history_csv)
        best = best_epoch(curves, cfg.monitor)
        metrics = {
            "best_epoch": int(best["epoch"]),
            "best_val_loss": float(best["val_loss"]),
            "best_val_accuracy": float(best["val_accuracy"]),
            "epochs_run": len(curves),
            "train_seconds": round(seconds, 1),
            "params": int(model.count_params()),  # the checkpoint has the same architecture
            "model_mb": round((out / "model.keras").stat().st_size / 1e6, 2),
        }
        tracking.log_metrics(metrics, prefix="train.")
        run = {"run_id": run_id, "model": params.model, "weights": cfg.weights, "imbalance": cfg.imbalance}
        write_json(out / "run.json", {**run, "classes": classes, "image_size": size, "data_version": data_version})
        plot_history(curves, curves_dir / "curves.png", fine_tune_start=fine_tune_epoch)
        tracking.log_artifacts(curves_dir, "train")
        write_json(metrics_json, metrics)
    log.info(
        "best epoch %d (of 0..%d): val_loss %.4f, val_accuracy %.4f",
        metrics["best_epoch"],
        metrics["epochs_run"] - 1,
        metrics["best_val_loss"],
        metrics["best_val_accuracy"],
    )
    return metrics


def best_epoch(curves: pd.DataFrame, monitor: str) -> pd.Series:
    """The row of the epoch the checkpoint kept (first best value of ``monitor``)."""
    index = curves[monitor].idxmin() if monitor.endswith("loss") else curves[monitor].idxmax()
    return curves.loc[index]
