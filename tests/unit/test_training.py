"""Training on a real (small) cache: outputs, MLflow run, determinism, two-phase fine-tuning."""

from __future__ import annotations

import json

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from chestxray.io import read_json
from chestxray.training import class_weights, train_model
from conftest import make_params

MV2_035 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
SMALL_CNN = {"backbones.cnn.filters": [8, 16], "train.epochs": 3, "train.batch_size": 16}


def run_training(cache_dir, tmp_path, **overrides):
    params = make_params(**{**SMALL_CNN, **overrides})
    metrics = train_model(params, cache_dir, tmp_path / "models", tmp_path / "train.json", tmp_path / "reports")
    return params, metrics


def test_train_writes_best_model_metrics_curves_and_mlflow_run(cache_dir, tmp_path, mlflow_store):
    params, metrics = run_training(cache_dir, tmp_path)
    run = read_json(tmp_path / "models" / "run.json")
    assert run["model"] == "cnn" and run["image_size"] == 32 and len(run["classes"]) == 4
    history = pd.read_csv(tmp_path / "reports" / "train" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3] and set(history["phase"]) == {"full"}
    best = history.loc[history["val_loss"].idxmin()]
    assert metrics["best_epoch"] == best["epoch"] and metrics["best_val_loss"] == pytest.approx(best["val_loss"])
    assert read_json(tmp_path / "train.json") == metrics
    assert (tmp_path / "reports" / "train" / "curves.png").stat().st_size > 1000

    # the saved model is the best checkpoint: its val loss is the best epoch's
    model = keras.models.load_model(tmp_path / "models" / "model.keras")
    x = np.load(cache_dir / "val_x.npy").astype(np.float32)
    y = np.load(cache_dir / "val_y.npy")
    loss = keras.losses.SparseCategoricalCrossentropy()(y, model.predict(x, verbose=0))
    assert float(loss) == pytest.approx(metrics["best_val_loss"], rel=1e-3)

    client = mlflow.MlflowClient(mlflow_store)
    logged = client.get_run(run["run_id"])
    assert logged.data.params["model"] == "cnn" and logged.data.params["train.epochs"] == "3"
    assert logged.data.params["backbones.cnn.filters"] == "[8, 16]"
    assert logged.data.tags["data_version"] == read_json(cache_dir / "meta.json")["data_version"]
    assert [m.step for m in client.get_metric_history(run["run_id"], "val_loss")] == [0, 1, 2]
    assert logged.data.metrics["train.best_epoch"] == metrics["best_epoch"]
    artifacts = {a.path for a in client.list_artifacts(run["run_id"], "train")}
    assert artifacts == {"train/curves.png", "train/history.csv"}
    model_info = mlflow.models.get_model_info(f"runs:/{run['run_id']}/model")
    assert json.loads(model_info.signature.to_dict()["inputs"])[0]["tensor-spec"]["shape"] == [-1, 32, 32, 1]


def test_same_seed_same_weights(cache_dir, tmp_path, mlflow_store):
    _, first = run_training(cache_dir, tmp_path / "a", **{"train.epochs": 2})
    _, second = run_training(cache_dir, tmp_path / "b", **{"train.epochs": 2})
    assert {k: v for k, v in first.items() if k != "train_seconds"} == {k: v for k, v in second.items() if k != "train_seconds"}
    a = keras.models.load_model(tmp_path / "a" / "models" / "model.keras").get_weights()
    b = keras.models.load_model(tmp_path / "b" / "models" / "model.keras").get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.shared
def test_two_phase_fine_tuning_from_imagenet(cache_dir, tmp_path, mlflow_store, keras_weights):
    """Phase 1 trains the head on the frozen ImageNet base; phase 2 only the top layers (not BatchNorm)."""
    keras_weights(MV2_035)
    _, metrics = run_training(
        cache_dir,
        tmp_path,
        model="mobilenetv2",
        **{"backbones.mobilenetv2.alpha": 0.35, "train.weights": "imagenet", "train.epochs": 1,
           "train.fine_tune_epochs": 1, "train.fine_tune_layers": 10, "train.augment.rotation": 0.0},
    )
    history = pd.read_csv(tmp_path / "reports" / "train" / "history.csv")
    assert list(history["phase"]) == ["head", "fine_tune"]
    assert history["lr"].iloc[1] == pytest.approx(history["lr"].iloc[0] * 0.1)

    from chestxray.models import build_model

    _, imagenet = build_model("mobilenetv2", 32, 4, "imagenet", {"alpha": 0.35}, 0.0)
    saved = keras.models.load_model(tmp_path / "models" / "model.keras")
    trained = next(layer for layer in saved.layers if isinstance(layer, keras.Model))  # the base
    if metrics["best_epoch"] == 2:  # the kept checkpoint is from the fine-tuning phase
        top_conv = trained.get_layer("Conv_1")  # the last conv, within the top 10
        assert not np.array_equal(top_conv.get_weights()[0], imagenet.get_layer(top_conv.name).get_weights()[0])
    for layer, ref_layer in zip(trained.layers[:-10], imagenet.layers[:-10], strict=True):  # below the cut
        for w, ref in zip(layer.get_weights(), ref_layer.get_weights(), strict=True):
            assert np.array_equal(w, ref), layer.name  # still the ImageNet weights
    bn = trained.get_layer("Conv_1_bn")  # in the top 10, but BatchNorm stays frozen
    assert all(np.array_equal(w, r) for w, r in zip(bn.get_weights(), imagenet.get_layer("Conv_1_bn").get_weights()))


def test_class_weights_balance_the_classes():
    y = np.array([0] * 6 + [1] * 3 + [2])
    w = class_weights(y, 4)
    assert w == {0: 10 / 24, 1: 10 / 12, 2: 10 / 4, 3: 0.0}
    # every present class carries the same total weight n / k in the loss
    assert [w[c] * n for c, n in enumerate(np.bincount(y, minlength=4)) if n] == pytest.approx([len(y) / 4] * 3)
