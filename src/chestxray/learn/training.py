"""Two-phase transfer learning: the head on a frozen pretrained base, then, from the best checkpoint so
far, the top layers of the base at a lower rate; best checkpoint by ``train.monitor``; every epoch in
MLflow and dvc plots. On one process, or on every process of a multi-worker cluster, where only the
chief writes the project's outputs and the MLflow run."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from chestxray import paths, tracking
from chestxray.config import Params, TrainSettings
from chestxray.data.cache import cache_meta, load_split
from chestxray.figures import figure, save_figure
from chestxray.io import atomic_path, read_json, write_json
from chestxray.learn import backbones, cluster, devices
from chestxray.learn.callbacks import (
    BatchNormPass,
    LogBatches,
    SwapEMAWeightsWithBatchNorm,
    ValidationMacroF1,
    monitor_mode,
    trainable_batchnorm,
)
from chestxray.learn.inputs import augmenter, make_dataset
from chestxray.learn.models import SparseFocalLoss, build_model, is_pretrained, unfreeze_top
from chestxray.progress import interactive
from chestxray.records import write_record

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic`` also make TF ops deterministic."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def synchronize_batchnorm(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Over several replicas, make ``model``'s trainable BatchNorm layers normalise each training
    batch with the statistics of the global batch (Keras' synchronized BatchNorm: an all-reduce of
    per-channel sums per layer and step), as one process does. Alone, each replica would use those of
    its share, a smaller batch: that trains another model (docs/training.md#gpus-and-more-machines)."""
    if strategy.num_replicas_in_sync > 1:
        for layer in trainable_batchnorm(model):
            layer.synchronized = True


def class_weights(y: np.ndarray, k: int) -> dict[int, float]:
    """Balanced weights n / (k · count) so every class weighs the same in the loss."""
    counts = np.bincount(y, minlength=k)
    return {i: float(len(y) / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


def loss_for(cfg: TrainSettings, y: np.ndarray, classes: Sequence[str]) -> keras.losses.Loss:
    """Cross-entropy, or with ``imbalance: focal`` the focal loss with its per-class alpha."""
    if cfg.imbalance != "focal":
        return keras.losses.SparseCategoricalCrossentropy()
    if cfg.focal.alpha == "balanced":
        alpha = list(class_weights(y, len(classes)).values())
    else:
        alpha = [cfg.focal.alpha[c] for c in classes]
    return SparseFocalLoss(alpha, cfg.focal.gamma)


def train_model(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    """Train ``params.model`` on ``root``'s image cache; write the best model and its run.json, the
    metrics, the history and the curves. The MLflow run gets the params the stage reads (``seed``,
    ``model``, ``backbones.<model>``, ``train``; ``train.seed`` as resolved: the top-level seed when
    null), the data stages' records as provenance, every epoch's metrics and the curves.

    With ``train.distribute: multiworker`` every process ``TF_CONFIG`` lists runs this on the same
    cache and params; only the chief writes into ``root`` and MLflow. Each other worker writes what
    training needs (checkpoints, history) into a temporary folder, removed when it ends."""
    task = cluster.task_for(params.train.distribute)  # a bad TF_CONFIG fails here, before TensorFlow starts
    strategy = devices.strategy(params.train.distribute)  # TensorFlow: before any other op of the process
    if task is None or task.is_chief:
        return _train(params, strategy, root, root, chief=True)
    with tempfile.TemporaryDirectory(prefix="chestxray-worker-") as scratch:
        log.info("%s: checkpoints and records go to %s, removed at the end; no MLflow run", task, scratch)
        return _train(params, strategy, root, Path(scratch), chief=False)


def _train(params: Params, strategy: tf.distribute.Strategy, root: Path, out_root: Path, chief: bool) -> dict[str, Any]:
    """``train_model`` on ``root``'s cache, writing into ``out_root``, and, for the ``chief``, to MLflow."""
    cfg, backbone = params.train, backbones.settings(params)
    seed_everything(cfg.seed, cfg.deterministic)
    cache_dir = root / paths.CACHE_DIR
    meta = cache_meta(cache_dir)
    classes, size, data_version = meta["classes"], meta["image_size"], meta["data_version"]
    if meta["occlude"]:
        log.warning(
            "data.occlude %g: training on images without their central %g %% box (the lungs-removed audit);"
            " this run is an audit run and never becomes champion",
            meta["occlude"],
            100 * meta["occlude"],
        )
    policy = devices.dtype_policy(cfg.mixed_precision)
    batch_size = cfg.batch_size * strategy.num_replicas_in_sync
    log.info("%d replica(s), global batch %d, dtype policy %s", strategy.num_replicas_in_sync, batch_size, policy)
    x_train, y_train = load_split(cache_dir, "train")
    x_val, y_val = load_split(cache_dir, "val")
    on_device = devices.augment_on_device()
    with devices.dtype_policy_scope(policy), strategy.scope():  # the scope holds the augmentation's seed state
        augment = augmenter(cfg.augment, cfg.seed, on_device=on_device)
        model, base = build_model(
            params.model,
            size,
            len(classes),
            cfg.weights,
            backbone.constructor_args,
            cfg.head,
            augment if on_device else None,
        )
    if augment is not None:
        log.info("augmentation runs %s", "on the device, in the model" if on_device else "in the input pipeline")
    train_ds = make_dataset(
        x_train, y_train, batch_size, True, cfg.seed, augment, balanced=cfg.imbalance == "oversample"
    )
    val_ds = make_dataset(x_val, y_val, batch_size, False, cfg.seed)
    # the batches training sees, without augmentation: for the BatchNorm statistics of the averaged weights
    bn_images = make_dataset(x_train, y_train, batch_size, True, cfg.seed, balanced=cfg.imbalance == "oversample").map(
        lambda images, _: images
    )
    synchronize_batchnorm(model, strategy)
    pretrained = is_pretrained(params.model, cfg.weights)
    lr = backbone.learning_rate
    phases = [("head" if pretrained else "full", cfg.epochs, lr, None)]
    if pretrained and cfg.fine_tune_epochs:
        phases.append(("fine_tune", cfg.fine_tune_epochs, lr * cfg.fine_tune_lr_factor, cfg.fine_tune_layers))
    weights = class_weights(y_train, len(classes)) if cfg.imbalance == "class_weight" else None
    loss = loss_for(cfg, y_train, classes)
    history_csv = out_root / paths.HISTORY_CSV
    history_csv.parent.mkdir(parents=True, exist_ok=True)
    history_csv.unlink(missing_ok=True)
    records = {"download": root / paths.DOWNLOAD_JSON, "validate": root / paths.VALIDATE_JSON}
    resolved = {"dtype_policy": policy, "replicas": strategy.num_replicas_in_sync, "global_batch_size": batch_size}

    # Left in the reverse order: the run ends, the model folder goes into place, and only then
    # train.json and its headline, which tell DVC the stage is done.
    with (
        atomic_path(out_root / paths.TRAIN_METRICS) as train_metrics,
        atomic_path(out_root / paths.TRAIN_JSON) as train_json,
        atomic_path(out_root / paths.MODEL_DIR, is_dir=True) as out,
        _mlflow_run(chief, params, meta, records, resolved) as run_id,
    ):
        mode = monitor_mode(cfg.monitor)
        checkpoint = keras.callbacks.ModelCheckpoint(
            out / "model.keras", monitor=cfg.monitor, mode=mode, save_best_only=True
        )  # one for both phases: its best carries over, so the kept model is the best of both
        macro_f1 = ValidationMacroF1(val_ds.map(lambda images, _: images), y_val, len(classes))
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
                start_from = best_epoch(pd.read_csv(history_csv), cfg.monitor)
                model.load_weights(out / "model.keras")
                log.info(
                    "fine-tuning starts from the best checkpoint, epoch %d (%s %.4f)",
                    start_from["epoch"],
                    cfg.monitor,
                    start_from[cfg.monitor],
                )
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
                    # first, so validation, macro-F1 and checkpoints use the weights' moving average with
                    # BatchNorm statistics recomputed for it
                    *([SwapEMAWeightsWithBatchNorm(BatchNormPass(model, bn_images))] if cfg.ema_momentum else []),
                    macro_f1,  # before every callback that reads val_macro_f1
                    checkpoint,
                    keras.callbacks.EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience),
                    keras.callbacks.ReduceLROnPlateau(
                        monitor=cfg.monitor, mode=mode, factor=0.5, patience=max(1, cfg.patience // 2)
                    ),
                    csv_log,
                    *([to_mlflow] if chief else []),
                    LogBatches(int(val_ds.cardinality())),  # a log line every LOG_INTERVAL s within an epoch
                ],
                verbose=1 if interactive() else 2,  # a terminal: Keras' bar; a log: one line per epoch
            )
            epoch += len(fit.history["loss"])
        seconds = time.perf_counter() - start
        curves = pd.read_csv(history_csv)
        best = best_epoch(curves, cfg.monitor)
        metrics = {
            "best_epoch": int(best["epoch"]),
            "best_val_loss": float(best["val_loss"]),
            "best_val_accuracy": float(best["val_accuracy"]),
            "best_val_macro_f1": float(best["val_macro_f1"]),
            "epochs_run": len(curves),
            "train_seconds": round(seconds, 1),
            "params": int(model.count_params()),  # the checkpoint has the same architecture
            "model_mb": round((out / "model.keras").stat().st_size / 1e6, 2),
        }
        if chief:
            tracking.log_metrics(metrics, prefix="train.")
        run = {"run_id": run_id, "model": params.model, "weights": cfg.weights, "imbalance": cfg.imbalance}
        data = {"classes": classes, "image_size": size, "occlude": meta["occlude"], "data_version": data_version}
        write_json(out / "run.json", {**run, **data})
        plot_history(curves, out_root / paths.CURVES_PNG, fine_tune_start=fine_tune_epoch)
        if chief:
            tracking.log_artifacts(history_csv.parent, "train")
        write_record("train", metrics, train_json, train_metrics)
    log.info(
        "best epoch %d (of 0..%d): val_loss %.4f, val_accuracy %.4f, val_macro_f1 %.4f",
        metrics["best_epoch"],
        metrics["epochs_run"] - 1,
        metrics["best_val_loss"],
        metrics["best_val_accuracy"],
        metrics["best_val_macro_f1"],
    )
    return metrics


@contextlib.contextmanager
def _mlflow_run(
    chief: bool, params: Params, meta: Mapping[str, Any], records: Mapping[str, Path], resolved: Mapping[str, Any]
) -> Iterator[str | None]:
    """The chief's MLflow run, with the params the stage reads, what they ``resolved`` to and the
    data ``records`` logged; its id. Any other worker: no run, None."""
    if not chief:
        yield None
        return
    tags = tracking.run_tags(params.model, meta["data_version"], meta["image_size"], meta["occlude"])
    with tracking.run(tags) as run_id:
        tracking.log_params(
            {**params.flat("seed", "model", f"backbones.{params.model}", "train"), "resolved": resolved}
        )
        tracking.log_data_records({name: read_json(path) for name, path in records.items() if path.exists()})
        yield run_id


def best_epoch(curves: pd.DataFrame, monitor: str) -> pd.Series:
    """The row of the epoch the checkpoint kept (first best value of ``monitor``)."""
    index = curves[monitor].idxmin() if monitor_mode(monitor) == "min" else curves[monitor].idxmax()
    return curves.loc[index]


def plot_history(history: pd.DataFrame, path: Path, fine_tune_start: int | None) -> None:
    """Training curves: a loss panel with train/val lines, an accuracy panel with train/val accuracy
    and the validation macro-F1; a dashed vertical line marks ``fine_tune_start``, the epoch where
    fine-tuning begins, when given."""
    panels = {
        "Loss": (("loss", "train"), ("val_loss", "validation")),
        "Accuracy": (("accuracy", "train"), ("val_accuracy", "validation"), ("val_macro_f1", "validation macro-F1")),
    }
    fig, (axes,) = figure((11, 4.2), ncols=2)
    for ax, (title, lines) in zip(axes, panels.items(), strict=True):
        for column, label in lines:
            if column in history:
                ax.plot(history["epoch"], history[column], marker="o", ms=3, label=label)
        if fine_tune_start is not None:
            ax.axvline(fine_tune_start, ls="--", color="grey", label="fine-tuning starts")
        ax.set(title=title, xlabel="Epoch", ylabel=title)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)
