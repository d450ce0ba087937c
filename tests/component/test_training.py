"""Training on a real (small) cache: outputs, MLflow run, determinism, two-phase fine-tuning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from test_serving import OPERATING_POINT

from chestxray import paths, tracking
from chestxray.config import HeadSettings
from chestxray.data.cache import cache_meta, load_split
from chestxray.io import read_json
from chestxray.learn import devices, explain
from chestxray.learn.inputs import Augment, make_dataset
from chestxray.learn.models import SparseFocalLoss
from chestxray.learn.training import class_weights, loss_for, train_model
from chestxray.serve import serving
from conftest import make_params, project

MV2_035 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
SMALL_CNN = {"backbones.cnn.filters": [8, 16], "train.epochs": 3, "train.batch_size": 16}


def run_training(cache_dir, tmp_path, **overrides):
    """train_model with ``tmp_path`` as the repository and the session's cache as its cache."""
    params = make_params(**{**SMALL_CNN, **overrides})
    metrics = train_model(params, project(tmp_path, cache=cache_dir))
    return params, metrics


def test_train_writes_best_model_metrics_curves_and_mlflow_run(cache_dir, tmp_path, mlflow_store):
    params, metrics = run_training(cache_dir, tmp_path)
    run = read_json(tmp_path / "models" / "run.json")
    assert run["model"] == "cnn" and run["image_size"] == 32 and len(run["classes"]) == 4
    assert (run["weights"], run["imbalance"]) == ("none", "class_weight")
    assert metrics["model_mb"] == round((tmp_path / "models" / "model.keras").stat().st_size / 1e6, 2) > 0
    history = pd.read_csv(tmp_path / paths.HISTORY_CSV)  # Keras' CSVLogger
    assert list(history.columns) == [
        "epoch",
        "accuracy",
        "learning_rate",
        "loss",
        "val_accuracy",
        "val_loss",
        "val_macro_f1",
    ]
    assert list(history["epoch"]) == [0, 1, 2]  # 0-based, as Keras and the MLflow steps count
    best = history.loc[history["val_loss"].idxmin()]
    assert metrics["best_epoch"] == best["epoch"] and metrics["best_val_loss"] == pytest.approx(best["val_loss"])
    assert metrics["best_val_macro_f1"] == pytest.approx(best["val_macro_f1"])
    assert read_json(tmp_path / paths.TRAIN_JSON) == metrics
    assert (tmp_path / paths.CURVES_PNG).stat().st_size > 1000

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
    # the params the stage reads (seed, model, backbones.<model>, train) and what they resolved to; no others
    read = params.flat("seed", "model", "backbones.cnn", "train")
    resolved = {"resolved.dtype_policy", "resolved.replicas", "resolved.global_batch_size"}
    assert set(logged.data.params) == set(read) | resolved
    assert all(logged.data.params[k] == str(v) for k, v in read.items())
    assert logged.data.tags["data_version"] == read_json(cache_dir / "meta.json")["data_version"]
    assert logged.data.tags["data.image_size"] == "32"
    assert [m.step for m in client.get_metric_history(run["run_id"], "val_loss")] == [0, 1, 2]
    logged_f1 = client.get_metric_history(run["run_id"], "val_macro_f1")
    assert [m.value for m in sorted(logged_f1, key=lambda m: m.step)] == pytest.approx(list(history["val_macro_f1"]))
    assert logged.data.metrics["train.best_epoch"] == metrics["best_epoch"]
    artifacts = {a.path for a in client.list_artifacts(run["run_id"], "train")}
    assert artifacts == {"train/curves.png", "train/history.csv"}


def test_same_seed_same_weights(cache_dir, tmp_path, mlflow_store):
    _, first = run_training(cache_dir, tmp_path / "a", **{"train.epochs": 2})
    _, second = run_training(cache_dir, tmp_path / "b", **{"train.epochs": 2})
    assert {k: v for k, v in first.items() if k != "train_seconds"} == {
        k: v for k, v in second.items() if k != "train_seconds"
    }
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
        **{
            "backbones.mobilenetv2.alpha": 0.35,
            "train.weights": "imagenet",
            "train.epochs": 1,
            "train.fine_tune_epochs": 1,
            "train.fine_tune_layers": 10,
            "train.augment.rotation": 0.0,
        },
    )
    history = pd.read_csv(tmp_path / paths.HISTORY_CSV)
    assert list(history["epoch"]) == [0, 1]  # one head epoch, one fine-tuning epoch
    assert history["learning_rate"].iloc[1] == pytest.approx(history["learning_rate"].iloc[0] * 0.1)

    from chestxray.learn.models import build_model

    _, imagenet = build_model("mobilenetv2", 32, 4, "imagenet", {"alpha": 0.35}, HeadSettings(dense=[], dropout=0.0))
    saved = keras.models.load_model(tmp_path / "models" / "model.keras")
    trained = next(layer for layer in saved.layers if isinstance(layer, keras.Model))  # the base
    if metrics["best_epoch"] == 1:  # the kept checkpoint is from the fine-tuning phase
        top_conv = trained.get_layer("Conv_1")  # the last conv, within the top 10
        assert not np.array_equal(top_conv.get_weights()[0], imagenet.get_layer(top_conv.name).get_weights()[0])
    for layer, ref_layer in zip(trained.layers[:-10], imagenet.layers[:-10], strict=True):  # below the cut
        for w, ref in zip(layer.get_weights(), ref_layer.get_weights(), strict=True):
            assert np.array_equal(w, ref), layer.name  # still the ImageNet weights
    bn = trained.get_layer("Conv_1_bn")  # in the top 10, but BatchNorm stays frozen
    assert all(
        np.array_equal(w, r)
        for w, r in zip(bn.get_weights(), imagenet.get_layer("Conv_1_bn").get_weights(), strict=True)
    )


def input_statistics(model: keras.Model, x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per BatchNorm layer of a saved small-CNN classifier: the mean and variance (over images and
    positions) of its input on ``x``, the model run in inference mode, i.e. with its saved statistics."""
    base = model.get_layer("cnn")
    images = np.asarray(model.get_layer("preprocess")(x))
    inputs = {
        layer.name: keras.Model(base.inputs, layer.input).predict(images, verbose=0)
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    inputs["head_bn"] = keras.Model(model.inputs, model.get_layer("head_bn").input).predict(x, verbose=0)
    return {name: statistics(v) for name, v in inputs.items()}


def statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (the last axis): mean and variance over every other axis, in float64."""
    axes = tuple(range(values.ndim - 1))
    return values.astype(np.float64).mean(axis=axes), values.astype(np.float64).var(axis=axes)


def saved_statistics(model: keras.Model, name: str) -> tuple[np.ndarray, np.ndarray]:
    layer = model.get_layer("head_bn") if name == "head_bn" else model.get_layer("cnn").get_layer(name)
    return np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)


def test_ema_checkpoint_has_the_batchnorm_statistics_of_its_own_weights(cache_dir, tmp_path, mlflow_store, monkeypatch):
    """With the weights' moving average, the checkpoint's BatchNorm statistics are those of the averaged
    weights over the training split. The first BatchNorm layer's input does not depend on how the
    pass batches the images, so its statistics are checked at batch 16 (8 batches); with one batch per
    pass (batch 128 > 114 images) every layer's input in training mode is its input in inference mode,
    so every layer is checked. Without the recompute (``BatchNormPass.run`` made a no-op), the same
    check fails."""
    from chestxray.learn.callbacks import BatchNormPass

    x = np.load(cache_dir / "train_x.npy").astype(np.float32)
    assert len(x) == 114
    run_training(cache_dir, tmp_path / "batched", **{"train.ema_momentum": 0.9})
    saved = keras.models.load_model(tmp_path / "batched" / "models" / "model.keras")
    mean, var = input_statistics(saved, x)["block1_bn1"]
    assert np.allclose(saved_statistics(saved, "block1_bn1"), (mean, var), rtol=1e-4, atol=1e-6)

    run_training(cache_dir, tmp_path / "one_batch", **{"train.ema_momentum": 0.9, "train.batch_size": 128})
    saved = keras.models.load_model(tmp_path / "one_batch" / "models" / "model.keras")
    statistics = input_statistics(saved, x)
    assert set(statistics) == {"block1_bn1", "block1_bn2", "block2_bn1", "block2_bn2", "head_bn"}
    for name, (mean, var) in statistics.items():
        assert np.allclose(saved_statistics(saved, name), (mean, var), rtol=1e-4, atol=1e-6), name

    monkeypatch.setattr(BatchNormPass, "run", lambda self: 0)
    run_training(cache_dir, tmp_path / "without", **{"train.ema_momentum": 0.9})
    saved = keras.models.load_model(tmp_path / "without" / "models" / "model.keras")
    mean, var = input_statistics(saved, x)["block1_bn1"]
    assert not np.allclose(saved_statistics(saved, "block1_bn1"), (mean, var), rtol=1e-4, atol=1e-6)


def test_fine_tuning_starts_from_the_best_head_epoch(cache_dir, tmp_path, mlflow_store, monkeypatch, caplog):
    """The small CNN stands in for a pretrained base (``is_pretrained`` made true in training only): phase 1
    trains the head on the frozen random base, phase 2 unfreezes its top layers. A recorder appended to
    every ``fit`` keeps the weights each epoch ends with (what the checkpoint saves); phase 2 must
    start from those of phase 1's best epoch, which here is not its last."""
    from chestxray.learn import training

    monkeypatch.setattr(training, "is_pretrained", lambda name, weights: True)
    at_epoch_end, at_fit_start = {}, []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            at_epoch_end[epoch] = self.model.get_weights()

    fit = keras.Model.fit

    def recording_fit(self, *args, callbacks, **kwargs):
        at_fit_start.append(self.get_weights())
        return fit(self, *args, callbacks=[*callbacks, Recorder()], **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    caplog.set_level("INFO", logger="chestxray.learn.training")
    _, metrics = run_training(
        cache_dir,
        tmp_path,
        **{
            "backbones.cnn.learning_rate": 0.05,
            "train.epochs": 4,
            "train.fine_tune_epochs": 1,
            "train.fine_tune_layers": 4,
            "train.patience": 10,
        },
    )
    history = pd.read_csv(tmp_path / paths.HISTORY_CSV)
    assert list(history["epoch"]) == [0, 1, 2, 3, 4] and len(at_fit_start) == 2
    head = history[history["epoch"] < 4]
    best = int(head.loc[head["val_loss"].idxmin(), "epoch"])
    assert best < 3, "this setting must give a phase 1 whose best epoch is not its last"
    same = [np.array_equal(a, b) for a, b in zip(at_fit_start[1], at_epoch_end[best], strict=True)]
    assert all(same)
    assert not all(np.array_equal(a, b) for a, b in zip(at_fit_start[1], at_epoch_end[3], strict=True))
    assert f"fine-tuning starts from the best checkpoint, epoch {best} (val_loss" in caplog.text
    # the checkpoint is still the best of both phases
    assert metrics["best_epoch"] == history.loc[history["val_loss"].idxmin(), "epoch"]


def test_monitor_val_macro_f1_keeps_the_epoch_with_the_best_validation_macro_f1(cache_dir, tmp_path, mlflow_store):
    from chestxray.judge.metrics import macro_f1

    _, metrics = run_training(
        cache_dir, tmp_path, **{"train.monitor": "val_macro_f1", "train.epochs": 8, "train.seed": 2}
    )
    history = pd.read_csv(tmp_path / paths.HISTORY_CSV)
    best = history.loc[history["val_macro_f1"].idxmax()]  # the first of equal best values
    assert best["epoch"] != history.loc[history["val_loss"].idxmin(), "epoch"], "val_loss would keep another"
    assert metrics["best_epoch"] == best["epoch"] and metrics["best_val_macro_f1"] == pytest.approx(
        best["val_macro_f1"]
    )
    assert metrics["best_val_loss"] == pytest.approx(best["val_loss"])

    # the kept model is that epoch's: its validation macro-F1 and loss, recomputed
    model = keras.models.load_model(tmp_path / "models" / "model.keras")
    x = np.load(cache_dir / "val_x.npy").astype(np.float32)
    y = np.load(cache_dir / "val_y.npy")
    prob = model.predict(x, verbose=0)
    cm = np.zeros((4, 4), int)
    np.add.at(cm, (y, prob.argmax(axis=1)), 1)
    assert float(macro_f1(cm, 0)) == pytest.approx(best["val_macro_f1"], abs=1e-12)
    loss = keras.losses.SparseCategoricalCrossentropy()(y, prob)
    assert float(loss) == pytest.approx(best["val_loss"], rel=1e-3)


def test_class_weights_balance_the_classes():
    y = np.array([0] * 6 + [1] * 3 + [2])
    w = class_weights(y, 4)
    assert w == {0: 10 / 24, 1: 10 / 12, 2: 10 / 4, 3: 0.0}
    # every present class carries the same total weight n / k in the loss
    assert [w[c] * n for c, n in enumerate(np.bincount(y, minlength=4)) if n] == pytest.approx([len(y) / 4] * 3)


def test_focal_loss_equals_the_hand_computation():
    y = np.array([0, 2, 1])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.25, 0.5]], np.float32)
    alpha, gamma = [0.5, 2.0, 1.0], 2.0
    # -alpha_y (1 - p_y)^gamma log p_y, averaged over the batch
    by_hand = [-0.5 * 0.3**2 * np.log(0.7), -1.0 * 0.4**2 * np.log(0.6), -2.0 * 0.75**2 * np.log(0.25)]
    loss = SparseFocalLoss(alpha, gamma)(y, p)
    assert float(loss) == pytest.approx(np.mean(by_hand), rel=1e-5)
    # gamma 0 and alpha 1: plain cross-entropy
    plain = keras.losses.SparseCategoricalCrossentropy()(y, p)
    assert float(SparseFocalLoss([1.0] * 3, 0.0)(y, p)) == pytest.approx(float(plain), rel=1e-5)
    again = keras.losses.deserialize(keras.losses.serialize(SparseFocalLoss(alpha, gamma)))
    assert float(again(y, p)) == pytest.approx(float(loss), rel=1e-6)


def test_focal_alpha_balanced_or_per_class():
    y = np.array([0] * 6 + [1] * 3 + [2])
    balanced = loss_for(make_params(**{"train.imbalance": "focal"}).train, y, ["A", "B", "C"])
    assert balanced.alpha == pytest.approx([10 / 18, 10 / 9, 10 / 3]) and balanced.gamma == 2.0
    cfg = make_params(
        **{
            "data.task": "binary",
            "train.imbalance": "focal",
            "train.focal.gamma": 1.0,
            "train.focal.alpha": {"non-COVID": 0.25, "COVID": 0.75},
        }
    ).train
    chosen = loss_for(cfg, np.array([0, 1]), ["COVID", "non-COVID"])
    assert chosen.alpha == [0.75, 0.25] and chosen.gamma == 1.0  # in class-index order
    assert isinstance(loss_for(make_params().train, y, ["A", "B", "C"]), keras.losses.SparseCategoricalCrossentropy)


def test_focal_training_reports_the_focal_loss(cache_dir, tmp_path, mlflow_store):
    _, metrics = run_training(cache_dir, tmp_path, **{"train.imbalance": "focal", "train.epochs": 2})
    model = keras.models.load_model(tmp_path / "models" / "model.keras")
    x = np.load(cache_dir / "val_x.npy").astype(np.float32)
    y, y_train = np.load(cache_dir / "val_y.npy"), np.load(cache_dir / "train_y.npy")
    alpha = list(class_weights(y_train, 4).values())
    expected = SparseFocalLoss(alpha, 2.0)(y, model.predict(x, verbose=0))
    assert metrics["best_val_loss"] == pytest.approx(float(expected), rel=1e-3)
    plain = keras.losses.SparseCategoricalCrossentropy()(y, model.predict(x, verbose=0))
    assert float(plain) != pytest.approx(metrics["best_val_loss"], rel=0.05)  # the focal loss is not cross-entropy


def test_oversampling_balances_every_epoch_and_batch():
    y = np.array([0] * 60 + [1] * 25 + [2] * 10 + [3] * 5)
    x = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1).repeat(2, axis=1).repeat(2, axis=2)
    ds = make_dataset(x, y, 20, True, seed=3, balanced=True)
    epochs = [list(ds.as_numpy_iterator()) for _ in range(2)]
    for batches in epochs:
        labels = np.concatenate([b for _, b in batches])
        assert len(labels) == 100 and np.bincount(labels).tolist() == [25, 25, 25, 25]
        assert all(np.bincount(b, minlength=4).tolist() == [5, 5, 5, 5] for _, b in batches)
        images = np.concatenate([a[:, 0, 0, 0] for a, _ in batches]).astype(int)
        assert np.array_equal(y[images], labels)  # each image still carries its own label
        rare = images[labels == 3]
        assert sorted(np.bincount(rare, minlength=100)[95:]) == [5, 5, 5, 5, 5]  # each rare image 5 times
    assert not np.array_equal(*(np.concatenate([a for a, _ in b]) for b in epochs))  # reshuffled per epoch


def test_oversample_training_runs_without_class_weights(cache_dir, tmp_path, mlflow_store):
    _, metrics = run_training(cache_dir, tmp_path, **{"train.imbalance": "oversample", "train.epochs": 1})
    client = mlflow.MlflowClient(mlflow_store)
    run = client.get_run(read_json(tmp_path / "models" / "run.json")["run_id"])
    assert run.data.params["train.imbalance"] == "oversample" and metrics["epochs_run"] == 1


def test_mixed_precision_on_cpu_keeps_float32_outputs(cache_dir, tmp_path, mlflow_store):
    run_training(cache_dir, tmp_path, **{"train.mixed_precision": "mixed_bfloat16", "train.epochs": 1})
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    model = keras.models.load_model(tmp_path / "models" / "model.keras")
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert base.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert base.get_layer("block1_conv1").variable_dtype == "float32"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    run = mlflow.MlflowClient(mlflow_store).get_run(read_json(tmp_path / "models" / "run.json")["run_id"])
    assert run.data.params["resolved.dtype_policy"] == "mixed_bfloat16"
    assert run.data.params["resolved.replicas"] == "1" and run.data.params["resolved.global_batch_size"] == "16"


def test_on_a_gpu_the_model_augments_and_the_input_pipeline_only_gathers_uint8(
    cache_dir, tmp_path, mlflow_store, monkeypatch
):
    """What training does when a GPU is visible. There is none here: ``devices.augment_on_device``
    is forced to say there is, and the same code runs on the CPU."""
    monkeypatch.setattr(devices, "augment_on_device", lambda: True)
    batches = []
    fit = keras.Model.fit

    def recording_fit(self, x, *args, **kwargs):
        batches.append(x.element_spec)
        return fit(self, x, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    _, metrics = run_training(cache_dir, tmp_path, **{"train.epochs": 4})
    images, _ = batches[0]
    assert images.dtype == tf.uint8 and images.shape[1:] == (32, 32, 1)  # what crosses to the device
    model = keras.models.load_model(tmp_path / "models" / "model.keras")
    augment = model.layers[1]
    assert isinstance(augment, Augment) and augment.on_device and augment.seed == 42
    # in training it augments, a new draw each call
    x_test, _ = load_split(cache_dir, "test")
    batch = tf.constant(x_test[:8])
    first, second = (augment(batch, training=True).numpy() for _ in range(2))
    assert np.abs(first - x_test[:8]).mean() > 5 and np.abs(first - second).mean() > 5
    # outside training it passes images through: the saved model predicts as the model after it does
    after = keras.Model(model.get_layer("preprocess").input, model.output)
    expected = after.predict(x_test.astype(np.float32), verbose=0)
    np.testing.assert_allclose(model.predict(x_test, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(explain.gradcam(model, x_test[:4]), explain.gradcam(after, x_test[:4]), atol=1e-5)
    # and it is served: the pyfunc model loads it (the layer is registered) and gives the same probabilities
    meta = cache_meta(cache_dir)
    with tracking.run(tracking.run_tags("cnn", meta["data_version"], 32)) as run_id:
        serving.log_model(tmp_path / "models" / "model.keras", meta["classes"], 32, OPERATING_POINT)
    served = serving.load(f"runs:/{run_id}/model")
    np.testing.assert_allclose(served.probabilities(x_test[..., 0]), expected, atol=1e-5)
    assert metrics["best_val_macro_f1"] > 0.5  # it learned
    # its draws come from train.seed: a rerun trains the same weights
    run_training(cache_dir, tmp_path / "again", **{"train.epochs": 4})
    again = keras.models.load_model(tmp_path / "again" / "models" / "model.keras").get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(model.get_weights(), again, strict=True))


MIRRORED = """
import sys
from pathlib import Path
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[3])
from conftest import make_params, project
from chestxray.learn import devices
from chestxray.learn.training import train_model
if sys.argv[4] == "mirrored":  # as on a machine with two GPUs, which augments on them (forced: no GPU here)
    devices.augment_on_device = lambda: True
params = make_params(**{"backbones.cnn.filters": [8, 16], "train.epochs": 2, "train.batch_size": 8,
                        "train.distribute": sys.argv[4]})
out = Path(sys.argv[2])
out.mkdir(parents=True)
train_model(params, project(out, cache=Path(sys.argv[1])))
"""


def test_mirrored_strategy_over_two_cpu_devices_scales_the_batch(cache_dir, tmp_path, mlflow_store):
    """MirroredStrategy for real, over two logical CPU devices (a GPU machine mirrors over GPUs, and
    augments on them); in a subprocess because devices are fixed when TensorFlow starts."""
    tests = str(Path(__file__).resolve().parents[1])
    for setting in ("mirrored", "auto"):
        done = subprocess.run(
            [sys.executable, "-c", MIRRORED, str(cache_dir), str(tmp_path / setting), tests, setting],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_store)
    resolved = {
        setting: client.get_run(read_json(tmp_path / setting / "models" / "run.json")["run_id"]).data.params
        for setting in ("mirrored", "auto")
    }
    assert (
        resolved["mirrored"]["resolved.replicas"] == "2" and resolved["mirrored"]["resolved.global_batch_size"] == "16"
    )
    assert (
        resolved["auto"]["resolved.replicas"] == "1" and resolved["auto"]["resolved.global_batch_size"] == "8"
    )  # no GPUs
    history = pd.read_csv(tmp_path / "mirrored" / "reports" / "train" / "history.csv")
    assert len(history) == 2 and read_json(tmp_path / "mirrored" / paths.TRAIN_JSON)["best_val_loss"] == pytest.approx(
        history["val_loss"].min()
    )
    # the mirrored run augmented on its two devices, the other in its input pipeline
    first = {s: keras.models.load_model(tmp_path / s / "models" / "model.keras").layers[1] for s in resolved}
    assert isinstance(first["mirrored"], Augment) and not isinstance(first["auto"], Augment)
